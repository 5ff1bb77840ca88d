"""One bank client process for tests/test_cluster.py.

``python tests/cluster_bank_client.py PD_ADDRS CLIENT_ID ACCOUNTS OPS OUT``:
makes ``OPS`` random transfers between ``ACCOUNTS`` accounts through
``kvstore.connect``; each transfer also writes a marker key
``done/<client>/<n>`` in the same transaction. Every transfer whose commit
returned is appended (and fsync'd) to ``OUT`` before the next starts, so the
checker knows exactly which transactions reported success. Transfers whose
outcome is unknown (the commit call itself failed) are recorded as such.
"""

from __future__ import annotations

import os
import random
import sys

import kvstore
from kvstore.errors import KVError


def main() -> int:
    pd, cid, n_accounts, ops, out = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    rng = random.Random(cid)
    with open(out, "a") as log, kvstore.connect(pd, timeout=30.0) as client:
        for n in range(ops):
            a, b = rng.sample(range(n_accounts), 2)
            amount = rng.randint(1, 5)
            marker = b"done/%d/%d" % (cid, n)

            def transfer(
                txn: kvstore.Transaction,
                a: int = a,
                b: int = b,
                amount: int = amount,
                marker: bytes = marker,
            ) -> None:
                ka, kb = b"acct/%02d" % a, b"acct/%02d" % b
                va = int(txn.get(ka) or b"0")
                vb = int(txn.get(kb) or b"0")
                if va < amount:
                    txn.put(marker, b"skip")
                    return
                txn.put(ka, b"%d" % (va - amount))
                txn.put(kb, b"%d" % (vb + amount))
                txn.put(marker, b"ok")

            try:
                client.transaction(transfer)
            except KVError as e:
                log.write(f"unknown {n} {type(e).__name__}\n")
            else:
                log.write(f"ok {n}\n")
            log.flush()
            os.fsync(log.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
