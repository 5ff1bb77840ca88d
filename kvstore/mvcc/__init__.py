"""MVCC over the three data column families.

Where it sits: above :mod:`kvstore.storage`, below the Percolator actions of
:mod:`kvstore.txn`. It knows the on-disk layout and nothing about transactions
beyond it:

* ``lock``    ``enc(key)              -> Lock``   at most one per key
* ``write``   ``enc(key) + ~commit_ts -> Write``  newest first
* ``default`` ``enc(key) + ~start_ts  -> value``  only for values longer than
  :data:`~kvstore.types.SHORT_VALUE_MAX_LEN` (shorter ones are inlined)

Key types: :class:`MvccReader` (reads at a timestamp) and :class:`MvccTxn`
(collects the mutations of one action into a write batch).

All keys passed in and out of this layer are *encoded* keys
(:func:`kvstore.codec.txn_key`); user keys appear only in errors and results
handed upwards.

Why reads need no cross-CF snapshot. A reader at ``ts`` checks the ``lock`` CF
for a key *before* reading its ``write`` CF. A transaction that was not yet
locked at the lock check prewrites afterwards and then takes its commit_ts from
the TSO, so its commit_ts is greater than ``ts`` and the reader ignores it; a
transaction that was locked is reported as :class:`~kvstore.errors.KeyIsLockedError`;
a commit is one atomic batch (lock removed, write added). Hence reads from the
live engine in that order are snapshot-consistent at ``ts``. Values in
``default`` referenced by a visible write are never deleted except by GC below
the safe point, which no reader may read below.

Pure module: no I/O beyond the given reader, no clock.
"""

from kvstore.mvcc.reader import CommitRecord, MvccReader
from kvstore.mvcc.txn import MvccTxn

__all__ = ["CommitRecord", "MvccReader", "MvccTxn"]
