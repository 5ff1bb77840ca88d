"""Crash recovery: SIGKILL a writer process at random points, reopen, check.

A writer subprocess (``tests/crash_writer.py``) commits transactions in a
loop, each writing four short values and one long value (default CF) under
keys of its own, plus the shared key ``last``, and reports each id right after
``commit()`` returns. The test waits until it has read a few reports, lets the
writer run a random few milliseconds more, and kills it with SIGKILL — between
or inside prewrite, the primary's commit and the secondaries' commit. Then it
reopens the same store in-process and checks:

* every acknowledged transaction is entirely there (durability);
* every transaction visible at all is entirely there with its own values (no
  torn write batch, no half-committed transaction: leftover locks are resolved
  by the reader, committing a transaction whose primary committed and rolling
  back one whose primary did not);
* the visible transactions of a writer are a prefix of its ids, at most one
  past the last acknowledged one (commit order survives; nothing from the
  future);
* once every lock is resolved none remains, and GC does not change the data;
* new transactions run on the reopened store, and survive the next round.

Several rounds share one store, so each round also re-checks every earlier one.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

import kvstore

HERE = Path(__file__).resolve().parent
WRITER = HERE / "crash_writer.py"
_spec = importlib.util.spec_from_file_location("crash_writer", WRITER)
assert _spec is not None and _spec.loader is not None
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

ROUNDS = 8
IDS_PER_ROUND = 10**6
# A leftover lock expires by the TTL written into it, i.e. the writer's
# (crash_writer.LOCK_TTL_MS, small); the reopened store's TSO also resumes
# above the killed writer's persisted high-water mark, so it is usually
# expired at once. The reader's own TTL applies to its own transactions.
READER_TTL_MS = 50
LINE_TIMEOUT_S = 60


def _pump(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # EOF: the writer is gone


def _run_writer_and_kill(
    db: Path, first_id: int, min_commits: int, kill_delay_s: float, tmp: Path
) -> list[int]:
    """Start the writer, wait for ``min_commits`` acknowledged commits, run it
    ``kill_delay_s`` more, SIGKILL it. Returns every id it acknowledged."""
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    stderr_path = tmp / f"writer-{first_id}.stderr"
    lines: queue.Queue[bytes | None] = queue.Queue()
    reported: list[int] = []

    def take(line: bytes) -> None:
        word, txn_id = line.split()
        assert word == b"committed", line
        reported.append(int(txn_id))

    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), str(first_id)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=root,
        )
    pump = None
    try:
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        pump.start()
        while len(reported) < min_commits:
            line = lines.get(timeout=LINE_TIMEOUT_S)
            if line is None:
                proc.wait(timeout=10)
                pytest.fail(
                    f"writer exited with {proc.returncode} after {len(reported)} commits:\n"
                    + stderr_path.read_text()
                )
            take(line)
        # The fault: a random moment in the writer's loop (not a wait for a
        # condition: any moment is as good as any other, that is the point).
        time.sleep(kill_delay_s)
        proc.kill()
        assert proc.wait(timeout=30) == -9
        # Drain what it printed before dying: those commits were acknowledged.
        while (line := lines.get(timeout=LINE_TIMEOUT_S)) is not None:
            take(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        if pump is not None:
            pump.join(timeout=10)
    return reported


def _check_store(
    client: kvstore.Client, rounds: list[tuple[int, list[int]]], post_commits: int
) -> dict[bytes, bytes]:
    """Check every round's invariants on the current state; return it."""
    with client.begin() as txn:
        rows = dict(txn.scan(b"t", b"u"))
        last = txn.get(cw.LAST_KEY)
        counter = txn.get(b"post/counter")
    by_id: dict[int, dict[bytes, bytes]] = {}
    for k, v in rows.items():
        txn_id, suffix = cw.parse_txn_key(k)
        by_id.setdefault(txn_id, {})[suffix] = v
    # Every visible transaction is whole, with its own values.
    for txn_id, got in by_id.items():
        expected = {k: str(txn_id).encode() for k in cw.txn_keys(txn_id)}
        expected[cw.big_key(txn_id)] = cw.big_value(txn_id)
        assert got == {cw.parse_txn_key(k)[1]: v for k, v in expected.items()}, (
            f"torn transaction {txn_id}: {got}"
        )
    for first_id, reported in rounds:
        assert reported == list(range(first_id, first_id + len(reported)))
        visible = sorted(i for i in by_id if first_id <= i < first_id + IDS_PER_ROUND)
        # Acknowledged => present; present => a prefix, at most one past the
        # acknowledged ones (the writer may die between commit and print).
        assert visible == list(range(first_id, first_id + len(visible))), (
            f"round {first_id}: visible ids are not a prefix: {visible}"
        )
        assert len(reported) <= len(visible) <= len(reported) + 1, (
            f"round {first_id}: acknowledged {len(reported)}, visible {len(visible)}"
        )
    strays = [i for i in by_id if not any(f <= i < f + IDS_PER_ROUND for f, _ in rounds)]
    assert not strays, f"transactions from no known writer: {strays}"
    # The shared key holds the newest transaction of the newest writer.
    newest_first = rounds[-1][0]
    newest = max(i for i in by_id if i >= newest_first)
    assert last == str(newest).encode(), (
        f"{cw.LAST_KEY!r} is {last!r} but the newest whole transaction is {newest}"
    )
    # Transactions run in-process after earlier crashes survived too.
    assert counter == (str(post_commits).encode() if post_commits else None)
    return rows


def test_sigkill_writer_then_reopen(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = random.Random(20240607)
    rounds: list[tuple[int, list[int]]] = []
    post_commits = 0
    for r in range(ROUNDS):
        first_id = (r + 1) * IDS_PER_ROUND
        min_commits = rng.randint(3, 25)
        kill_delay = rng.choice([0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.05)])
        reported = _run_writer_and_kill(db, first_id, min_commits, kill_delay, tmp_path)
        assert len(reported) >= min_commits
        rounds.append((first_id, reported))

        client = kvstore.open(db, lock_ttl_ms=READER_TTL_MS)
        try:
            before = _check_store(client, rounds, post_commits)
            # Resolve whatever the killed writer left locked; nothing may
            # remain, and neither resolving nor GC may change what is visible.
            client.gc(client.tso())
            assert client.backend.kv_scan_lock(client.tso()) == []
            assert _check_store(client, rounds, post_commits) == before

            # The reopened store takes new transactions.
            def bump(txn: kvstore.Transaction, r: int = r) -> int:
                n = int(txn.get(b"post/counter") or b"0") + 1
                txn.put(b"post/counter", str(n).encode())
                txn.put(b"post/round%d" % r, b"x" * 500)
                return n

            post_commits = client.transaction(bump)
            assert post_commits == r + 1
            with client.begin() as txn:
                assert txn.get(b"post/counter") == str(r + 1).encode()
                assert txn.get(b"post/round%d" % r) == b"x" * 500
        finally:
            client.close()

    # Last look after a clean reopen.
    with kvstore.open(db) as client:
        _check_store(client, rounds, post_commits)
