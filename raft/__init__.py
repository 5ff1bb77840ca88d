"""Multi-Raft on pysyncobj (not built yet).

Will hold: one pysyncobj group per Region replica, all ticked by one driver
thread per store; a durable journal (the Raft log fsync'd before an append is
acknowledged); snapshots through RocksDB checkpoints instead of the library's
compaction; learners (non-voting members) with their log index exposed to the
columnar replica. See DESIGN.md §4 for the pysyncobj traps this layer defuses.
"""
