"""The columnar replica's storage and read engine (TiFlash's role), pure.

**What.** A columnar node follows every Region as a non-voting Raft learner.
This package is what it applies the log into and reads from; it has no
network, no Raft, no processes (``kvstore.server`` wires it to learner peers,
read-index RPCs and gRPC Arrow streams).

* :class:`ColumnarStore` (``columnar.engine``): ``apply(index, ops, region_id)``
  consumes exactly the ``WriteBatch.ops`` the row store's apply path writes
  (``lock``/``default``/``write`` CFs, puts, deletes, delete_range), in log
  order; ``read(table, ts, columns, predicate)`` returns a ``pyarrow.Table``
  equal to a row-store scan of the table at ``ts``;
  ``compact()`` folds deltas into the stable base; ``wait_applied`` lets a
  reader wait for a read index.
* ``columnar.segment``: one table's versions (raw, Arrow deltas, stable base)
  with hidden columns ``_handle``, ``_commit_ts``, ``_delete_mark``, and the
  vectorised MVCC filter and GC pruning.
* ``columnar.aggregate``: partial aggregation (group-by + sum/count/min/max)
  on a filtered table and the merge of partials.

**Where.** Above ``kvstore.codec``/``types``/``errors``/``tablecodec`` and the
storage constants; below ``kvstore.server`` and ``sql``. It never imports
``kvstore.client``, ``kvstore.server``, the MVCC/txn layers, Raft or gRPC
(an import-linter contract in pyproject.toml), so the lock rule and MVCC rule
are restated here, mirroring ``kvstore.mvcc.reader`` (tests compare them).

**Model.** Locks (``lock`` CF) and uncommitted long values (``default`` CF)
stay in memory, keyed like the row store. A ``write`` CF PUT/DELETE record
on a table's row key is a committed version: ``(handle, commit_ts, value or
delete mark)``; ROLLBACK/LOCK records carry no data. Committed versions of a
table's schema key (``mT{id}``) define its schema: rows are decoded only with
a schema committed in the log (or one a reader passes, itself read from
committed meta keys), never a guessed one. Rows committed before their
schema, or mentioning columns of a schema not yet applied, stay undecoded
until it arrives. The GC safe point arrives in the ``raft`` CF (the only
``raft`` key read); GC's deletes of old versions are not replayed one by one:
compaction drops exactly those versions (all versions above the safe point,
plus the newest one at or below it unless it is a delete), and reads below
the safe point raise ``GcTooEarlyError``.

**Invariants.** (1) For every table and every ``ts >= safe point``,
``read(table, ts)`` equals the row store's scan of the table's rows at
``ts`` fed the same batches, or both raise ``KeyIsLockedError`` for the same
(first, in key order) blocking lock; property-tested in
``tests/test_columnar_property.py`` against a real embedded store.
(2) Apply is atomic per batch for readers and idempotent per log index.
(3) Compaction never changes what any read at ``ts >= safe point`` returns,
whenever it runs.

**Persistence** is not this package's: the store is in memory. The columnar
node (``kvstore.server.columnar_node``) keeps each learner's row data in its
own RocksDB replica and rebuilds a Region's Arrow state from it on start and
on a snapshot install (``delete_range`` + puts, which apply handles). The
read-index waits and per-Region epoch re-checks are the node's job too.
Pure: no wall clock, no randomness.
"""

from columnar.aggregate import merge_partials, partial_aggregate
from columnar.engine import GC_SAFE_POINT_KEY, ColumnarStore

__all__ = ["GC_SAFE_POINT_KEY", "ColumnarStore", "merge_partials", "partial_aggregate"]
