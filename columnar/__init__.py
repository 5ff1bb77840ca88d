"""The columnar replica (not built yet).

Will hold: a learner member of every Region that applies the Raft log into
Apache Arrow tables (a compacted stable base plus a small delta per table),
and snapshot-consistent reads at a timestamp (TiFlash's learner read: read
index, wait for apply, lock check, MVCC filter, epoch re-check).
"""
