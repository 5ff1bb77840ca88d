"""Raw (non-transactional) key-value commands on one store.

Where it sits: beside :mod:`kvstore.txn`, above :mod:`kvstore.storage`. Raw keys
live in their own key space (``b"r"`` + key, memcomparable-encoded) of the
``default`` column family, so they never mix with transactional data.

Semantics (TiKV RawKV): every single-key command is linearizable on its store;
``batch_put`` is atomic; ``compare_and_swap`` is atomic with respect to every
other raw write (all raw writes take the key's latch). A value may carry a TTL
in seconds; an expired value reads as absent and is removed lazily.

Value layout: one flag byte (0: no TTL, 1: TTL), then for a TTL the expiry as
8 big-endian bytes of Unix milliseconds, then the user value.
"""

from kvstore.rawkv.store import RawStore

__all__ = ["RawStore"]
