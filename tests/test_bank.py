"""Bank workload (Jepsen's ``bank``): money moves, the total never changes.

Eight worker threads transfer random amounts between accounts of a RocksDB
store, each through its own :class:`kvstore.Client` (as separate processes
would), with ``Client.transaction`` retrying conflicts. Some transfers are
*abandoned* mid-commit, as by a client that crashed:

* after prewrite: locks on both accounts, never committed — other clients
  must roll them back once their TTL runs out;
* after the primary's commit: the transfer is committed, its secondary still
  locked — other clients must commit it when they meet the lock.

Meanwhile a reader thread sums all balances in one transaction (a scan) again
and again: under snapshot isolation every sum equals the initial total, even
while locks and half-committed transfers are about. At the end the total is
conserved, no balance is negative, and once every lock is resolved none is
left.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import kvstore
from kvstore.errors import TxnAbortedError, WriteConflictError

N_ACCOUNTS = 10
INITIAL = 100
TOTAL = N_ACCOUNTS * INITIAL
N_WORKERS = 8
OPS_PER_WORKER = 40
ABANDON_EVERY = 8  # about one transfer in eight is abandoned mid-commit
TTL_MS = 100
PREFIX = b"acct/"


def _key(i: int) -> bytes:
    return PREFIX + b"%02d" % i


def _balances(txn: kvstore.Transaction) -> dict[bytes, int]:
    rows = txn.scan(PREFIX, PREFIX + b"\xff")
    return {k: int(v) for k, v in rows}


def _plan_transfer(txn: kvstore.Transaction, rng: random.Random) -> tuple[bytes, bytes, int] | None:
    """Read two accounts and buffer a transfer between them (None: nothing
    to move)."""
    a, b = rng.sample(range(N_ACCOUNTS), 2)
    src, dst = _key(a), _key(b)
    got = txn.batch_get([src, dst])
    src_bal, dst_bal = int(got[src]), int(got[dst])
    assert src_bal >= 0 and dst_bal >= 0
    if src_bal == 0:
        return None
    amount = rng.randint(1, min(src_bal, 30))
    txn.put(src, str(src_bal - amount).encode())
    txn.put(dst, str(dst_bal + amount).encode())
    return src, dst, amount


def test_bank_total_is_conserved(tmp_path: Path) -> None:
    client = kvstore.open(tmp_path / "db", lock_ttl_ms=TTL_MS)
    clients: list[kvstore.Client] = []
    try:
        with client.begin() as txn:
            for i in range(N_ACCOUNTS):
                txn.put(_key(i), str(INITIAL).encode())

        errors: list[BaseException] = []
        stats = {"committed": 0, "gave_up": 0, "abandoned_prewrite": 0, "abandoned_primary": 0}
        stats_lock = threading.Lock()
        writers_done = threading.Event()
        sums: list[int] = []

        def count(what: str) -> None:
            with stats_lock:
                stats[what] += 1

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            # One client per worker, like one per process: its own lock
            # resolver cache and TTL manager, sharing only the store.
            c = kvstore.Client(client.backend, client.pd, lock_ttl_ms=TTL_MS, seed=seed)
            clients.append(c)
            try:
                for n in range(OPS_PER_WORKER):
                    if n % ABANDON_EVERY == ABANDON_EVERY - 1:
                        stage = rng.choice(["prewrite", "primary"])
                        txn = c.begin()
                        if _plan_transfer(txn, rng) is None:
                            txn.rollback()
                            continue
                        try:
                            txn._commit(stop_after=stage)
                        except WriteConflictError:
                            continue  # aborted before its commit point: nothing happened
                        count(f"abandoned_{stage}")
                        continue
                    try:
                        c.transaction(lambda t: _plan_transfer(t, rng), max_retries=20)
                        count("committed")
                    except (WriteConflictError, TxnAbortedError):
                        count("gave_up")  # aborted: the transfer did not happen
            except BaseException as e:
                errors.append(e)

        def reader() -> None:
            c = kvstore.Client(client.backend, client.pd, lock_ttl_ms=TTL_MS, seed=-1)
            clients.append(c)
            try:
                # At least a few reads, and reads for as long as writers run.
                while not writers_done.is_set() or len(sums) < 5:
                    txn = c.begin()
                    bal = _balances(txn)
                    txn.rollback()
                    assert len(bal) == N_ACCOUNTS, bal
                    assert all(v >= 0 for v in bal.values()), bal
                    sums.append(sum(bal.values()))
                    assert sums[-1] == TOTAL, f"read skew: sum {sums[-1]} != {TOTAL}: {bal}"
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(N_WORKERS)]
        rthread = threading.Thread(target=reader)
        rthread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        writers_done.set()
        rthread.join(timeout=120)
        assert not any(t.is_alive() for t in [*threads, rthread]), "a thread hung"
        if errors:
            raise errors[0]

        assert stats["committed"] > 0
        assert stats["abandoned_prewrite"] + stats["abandoned_primary"] > 0, stats
        assert len(sums) >= 5 and all(s == TOTAL for s in sums)
        # Other clients did meet and resolve the abandoned transfers' locks.
        assert sum(c.resolver.resolved_count for c in clients) > 0

        # Resolve every leftover lock (abandoned transfers nobody touched),
        # then check the final state.
        client.gc(client.tso())
        assert client.backend.kv_scan_lock(client.tso()) == []
        with client.begin() as txn:
            final = _balances(txn)
        assert len(final) == N_ACCOUNTS
        assert sum(final.values()) == TOTAL
        assert all(v >= 0 for v in final.values()), final
        # Money actually moved (otherwise the test proved nothing).
        assert any(v != INITIAL for v in final.values())
    finally:
        for c in clients:
            c.close()
        client.close()

    # And it is all still there after a reopen.
    with kvstore.open(tmp_path / "db") as client, client.begin() as txn:
        assert _balances(txn) == final
