"""Writer process for ``tests/test_crash_recovery.py``: runs until SIGKILLed.

Usage: ``python tests/crash_writer.py DB_PATH FIRST_ID``

Runs transactions ``FIRST_ID, FIRST_ID + 1, ...`` one after another. Each one
writes, in one transaction, :func:`txn_keys` (four keys whose value is the id,
short enough to be inlined in the write record), :func:`big_key` (a value too
long to inline, so it goes through the ``default`` column family) and the
shared key :data:`LAST_KEY` (the id; it is also the primary, being the
smallest key). Right after ``commit()`` returns it prints
``committed <id>`` and flushes, so every id the parent reads was acknowledged.

The key layout lives here and the test imports it, so both agree.
"""

from __future__ import annotations

import sys

LAST_KEY = b"last"
BIG_LEN = 1000
LOCK_TTL_MS = 100


def txn_keys(txn_id: int) -> list[bytes]:
    return [b"t%010d/k%d" % (txn_id, j) for j in range(4)]


def big_key(txn_id: int) -> bytes:
    return b"t%010d/big" % txn_id


def big_value(txn_id: int) -> bytes:
    return (b"%d:" % txn_id * BIG_LEN)[:BIG_LEN]


def parse_txn_key(key: bytes) -> tuple[int, bytes]:
    """``b"t0000000042/k1"`` -> ``(42, b"k1")``."""
    head, _, suffix = key.partition(b"/")
    return int(head[1:]), suffix


def main() -> None:
    import kvstore

    path, first = sys.argv[1], int(sys.argv[2])
    client = kvstore.open(path, lock_ttl_ms=LOCK_TTL_MS)
    txn_id = first
    while True:
        txn = client.begin()
        value = str(txn_id).encode()
        for k in txn_keys(txn_id):
            txn.put(k, value)
        txn.put(big_key(txn_id), big_value(txn_id))
        txn.put(LAST_KEY, value)
        txn.commit()
        sys.stdout.write(f"committed {txn_id}\n")
        sys.stdout.flush()
        txn_id += 1


if __name__ == "__main__":
    main()
