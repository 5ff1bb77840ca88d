"""``htapkv demo``: a guided tour of a real local cluster, printed as it runs.

Starts PD, three store processes and a columnar node
(``kvstore.LocalCluster``, data in a temporary folder), then shows: what runs
where; raw KV; a transfer transaction; a write conflict and its retry by
re-running the function; a client that crashes in the middle of two-phase
commit, leaving locks that the next reader resolves; Regions splitting under
load; an analytic query answered by the columnar replica; sections that the
layers above add (the SQL layer shows statements and where each one ran); a
store killed with SIGKILL while clients keep transferring money (the total
never changes); and stops every process. ``htapkv demo --embedded`` runs the transactional part
on the single-process embedded store instead.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

import kvstore
from kvstore import codec
from kvstore.client import Client
from kvstore.errors import KVError, WriteConflictError

SPLIT_KEYS = 300


def _balances(c: Client) -> dict[str, int]:
    with c.begin() as t:
        return {k.decode(): int(v) for k, v in t.scan(b"acct/", b"acct0")}


# A demo section contributed by a layer above kvstore (the SQL layer adds
# one): called with the console, the running cluster and a connected client.
Section = Callable[[Console, "kvstore.LocalCluster", Client], None]


def run_demo(
    data_dir: str | None = None, *, embedded: bool = False, sections: Sequence[Section] = ()
) -> int:
    console = Console()
    tmp = data_dir or tempfile.mkdtemp(prefix="htapkv-demo-")
    try:
        if embedded:
            _run_embedded(console, tmp)
        else:
            _run_cluster(console, tmp, sections)
    finally:
        if data_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run_embedded(console: Console, tmp: str) -> None:
    console.rule("[bold]htapkv demo: the embedded transactional store")
    console.print(f"RocksDB data in [cyan]{tmp}[/] (one process, no network)")
    with kvstore.open(tmp, lock_ttl_ms=300) as c:
        _demo_raw(console, c)
        _demo_transactions(console, c)
        _demo_conflict(console, c)
        _demo_crashed_client(console, c)
    console.print("\nReopening the store from disk...")
    with kvstore.open(tmp) as c:
        bal = _balances(c)
        console.print(f"balances after reopen: {bal}  total={sum(bal.values())}")
    console.rule("[bold green]demo finished; store closed, temporary data removed")


def _run_cluster(console: Console, tmp: str, sections: Sequence[Section]) -> None:
    console.rule("[bold]htapkv demo: a local cluster (PD + 3 stores, real processes)")
    cluster = kvstore.LocalCluster(
        tmp, pd=1, stores=3, columnar=1, store_args=["--split-keys", str(SPLIT_KEYS)]
    )
    with console.status(
        "starting PD, 3 stores and a columnar node; waiting for Region 1's replicas and learner..."
    ):
        t0 = time.monotonic()
        cluster.start()
    try:
        console.print(
            f"cluster serving after {time.monotonic() - t0:.1f} s; data in [cyan]{tmp}[/]"
        )
        _show_processes(console, cluster)
        with cluster.connect(lock_ttl_ms=300) as c:
            _demo_raw(console, c)
            _show_where(console, cluster, [b"greeting"])
            _demo_transactions(console, c)
            _demo_conflict(console, c)
            _demo_crashed_client(console, c)
            _demo_splits(console, cluster, c)
            _demo_analytics(console, cluster, c)
            for section in sections:
                section(console, cluster, c)
            _demo_store_kill(console, cluster, c, number=7 + len(sections))
    finally:
        with console.status("stopping every process..."):
            cluster.stop()
    console.rule("[bold green]demo finished; every process stopped, temporary data removed")


def _show_processes(console: Console, cluster: kvstore.LocalCluster) -> None:
    table = Table("process", "role", "address", "pid", "store id")
    for p in cluster.processes():
        table.add_row(p.name, p.role, p.addr, str(p.pid), str(p.store_id or ""))
    console.print(table)


def _show_regions(console: Console, cluster: kvstore.LocalCluster, title: str) -> None:
    table = Table("region", "start", "end", "epoch", "replicas on stores", "leader", title=title)
    for region, leader in cluster.pd().scan_regions(b"", b"", 0):
        stores = ", ".join(str(p.store_id) for p in region.peers)
        table.add_row(
            str(region.id),
            codec.display_key(region.start_key),
            codec.display_key(region.end_key) if region.end_key else "+inf",
            f"{region.epoch.conf_ver}/{region.epoch.version}",
            stores,
            f"store {leader}" if leader else "?",
        )
    console.print(table)


def _show_where(console: Console, cluster: kvstore.LocalCluster, keys: list[bytes]) -> None:
    for key in keys:
        found = cluster.pd().get_region(codec.raw_key(key))
        if found is not None:
            region, leader = found
            console.print(
                f"  {key!r} lives in Region {region.id}, replicated on stores "
                f"{[p.store_id for p in region.peers]}, served by its leader on store {leader}"
            )


def _demo_splits(console: Console, cluster: kvstore.LocalCluster, c: Client) -> None:
    console.rule(f"5. Regions split as they grow (threshold here: {SPLIT_KEYS} keys)")
    before = len(cluster.pd().scan_regions(b"", b"", 0))
    with console.status("writing 1,500 keys in batches of 100..."):
        for i in range(0, 1500, 100):
            c.raw.batch_put([(b"user/%05d" % j, b"x" * 100) for j in range(i, i + 100)])
        cluster.wait_for(
            "the splits to settle",
            lambda: (
                len(cluster.pd().scan_regions(b"", b"", 0)) > before and cluster.fully_replicated()
            ),
            120,
        )
    _show_regions(console, cluster, "Regions after the load (PD's directory)")
    n = len(c.raw.scan(b"user/", b"user0", limit=10_000))
    console.print(f"a raw scan across every Region boundary returns all {n} keys")


def _demo_analytics(console: Console, cluster: kvstore.LocalCluster, c: Client) -> None:
    console.rule("6. an analytic query on the columnar replica (Arrow learner of every Region)")
    from kvstore.client import tables

    info = tables.create_table(
        c, "orders", [("id", "BIGINT"), ("region", "TEXT"), ("amount", "DOUBLE")], "id"
    )
    regions = ("north", "south", "east", "west")
    with console.status("inserting 5,000 orders in 10 transactions..."):
        for lo in range(0, 5000, 500):
            with c.begin() as txn:
                rows = [
                    {"id": i, "region": regions[i % 4], "amount": float(i % 97)}
                    for i in range(lo, lo + 500)
                ]
                tables.insert(txn, info, rows)
    ts = c.tso()
    fallbacks = c.columnar.fallbacks if c.columnar else 0
    t0 = time.monotonic()
    result = c.columnar_scan(
        "orders",
        predicate=[("amount", ">=", 50.0)],
        group_by=["region"],
        aggregates=[("count", "*"), ("sum", "amount")],
        ts=ts,
    )
    ms = (time.monotonic() - t0) * 1000
    by_node = c.columnar is not None and c.columnar.fallbacks == fallbacks
    table = Table("region", "orders with amount >= 50", "sum(amount)")
    for row in sorted(result.to_pylist(), key=lambda r: r["region"]):
        table.add_row(row["region"], str(row["count(*)"]), f"{row['sum(amount)']:.0f}")
    console.print(
        "SELECT region, count(*), sum(amount) FROM orders WHERE amount >= 50 GROUP BY region"
    )
    console.print(table)
    node = next(p for p in cluster.processes() if p.role == "columnar")
    where = f"the columnar node {node.name} ({node.addr})" if by_node else "the row store"
    console.print(
        f"answered by {where} in {ms:.0f} ms, consistent at ts {ts}: each Region's leader "
        "gave its read index, the learner caught up to it, checked locks, kept the newest "
        "version <= ts of each row, then filtered and aggregated in Arrow"
    )


def _demo_store_kill(
    console: Console, cluster: kvstore.LocalCluster, c: Client, number: int = 7
) -> None:
    console.rule(f"{number}. SIGKILL a store while 4 clients keep transferring money")
    stop = threading.Event()
    done: Counter[str] = Counter()
    names = ["alice", "bob", "carol", "dave"]

    def worker(i: int) -> None:
        k = 0
        while not stop.is_set():
            src, dst = names[(i + k) % 4], names[(i + k + 1) % 4]
            k += 1

            def fn(txn: kvstore.Transaction, src: str = src, dst: str = dst) -> None:
                a = int(txn.get(b"acct/" + src.encode()) or 0)
                if a < 1:
                    return
                b = int(txn.get(b"acct/" + dst.encode()) or 0)
                txn.put(b"acct/" + src.encode(), str(a - 1).encode())
                txn.put(b"acct/" + dst.encode(), str(b + 1).encode())

            try:
                c.transaction(fn)
                done["committed"] += 1
            except KVError:
                done["failed"] += 1

    total = sum(_balances(c).values())
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        cluster.wait_for("some transfers", lambda: done["committed"] >= 20, 60)
        leaders = Counter(lead for _, lead in cluster.pd().scan_regions(b"", b"", 0) if lead)
        victim_id = leaders.most_common(1)[0][0]
        victim = cluster.name_of_store(victim_id)
        at_kill = done["committed"]
        t0 = time.monotonic()
        cluster.kill(victim)
        console.print(
            f"killed {victim} (store {victim_id}, leader of {leaders[victim_id]} Regions)"
        )
        cluster.wait_for("transfers to continue", lambda: done["committed"] >= at_kill + 20, 120)
        console.print(
            f"clients committed again {time.monotonic() - t0:.2f} s after the kill "
            "(new leaders elected among the 2 surviving replicas of each Region)"
        )
        _show_regions(console, cluster, f"Regions with {victim} down")
        with console.status(f"restarting {victim}; it catches up from its Raft log..."):
            cluster.restart(victim)
    finally:
        stop.set()
        for t in threads:
            t.join()
    bal = _balances(c)
    console.print(
        f"{done['committed']} transfers committed, {done['failed']} gave up; "
        f"balances {bal}: total {sum(bal.values())} (was {total})"
    )


def _demo_raw(console: Console, c: Client) -> None:
    console.rule("1. raw KV (no transactions, linearizable per key)")
    c.raw.put(b"greeting", b"hello")
    swapped, prev = c.raw.compare_and_swap(b"greeting", b"hello", b"bonjour")
    console.print(
        f"raw.put greeting=hello; compare_and_swap(hello->bonjour) -> {swapped}, was {prev!r}"
    )
    console.print(f"raw.get greeting -> {c.raw.get(b'greeting')!r}")


def _demo_transactions(console: Console, c: Client) -> None:
    console.rule("2. transactions: Percolator 2PC with timestamps from the TSO")
    with c.begin() as t:
        for name in ("alice", "bob", "carol"):
            t.put(b"acct/" + name.encode(), b"100")
    console.print(f"opened 3 accounts in txn start_ts={t.start_ts} commit_ts={t.commit_ts}")

    def transfer(src: str, dst: str, amount: int) -> None:
        def fn(txn: kvstore.Transaction) -> None:
            a = int(txn.get(b"acct/" + src.encode()) or 0)
            b = int(txn.get(b"acct/" + dst.encode()) or 0)
            txn.put(b"acct/" + src.encode(), str(a - amount).encode())
            txn.put(b"acct/" + dst.encode(), str(b + amount).encode())

        c.transaction(fn)

    transfer("alice", "bob", 30)
    table = Table("account", "balance")
    for k, v in _balances(c).items():
        table.add_row(k, str(v))
    console.print("after transfer alice -> bob (30):")
    console.print(table)


def _demo_conflict(console: Console, c: Client) -> None:
    console.rule("3. a write conflict: first committer wins, the loser re-runs")
    t1, t2 = c.begin(), c.begin()
    for t in (t1, t2):
        v = int(t.get(b"acct/carol") or 0)
        t.put(b"acct/carol", str(v + 10).encode())
    t1.commit()
    console.print(f"txn {t1.start_ts} added 10 to carol and committed at {t1.commit_ts}")
    try:
        t2.commit()
    except WriteConflictError as e:
        console.print(f"txn {t2.start_ts} [red]failed[/]: {e}")
    attempts: list[int] = []

    def add_ten(txn: kvstore.Transaction) -> int:
        attempts.append(txn.start_ts)
        v = int(txn.get(b"acct/carol") or 0) + 10
        if len(attempts) == 1:
            # Another client writes carol after our read: our commit must
            # conflict, and the retry must see the new value.
            other = threading.Thread(
                target=lambda: c.transaction(lambda x: x.put(b"acct/carol", b"0"))
            )
            other.start()
            other.join()
        txn.put(b"acct/carol", str(v).encode())
        return v

    result = c.transaction(add_ten)
    console.print(
        f"client.transaction ran the function at start_ts {attempts}: the first attempt "
        f"conflicted with another client's write; carol = {result}. "
        "Writes are never replayed: the logic re-runs on fresh reads."
    )


def _demo_crashed_client(console: Console, c: Client) -> None:
    console.rule("4. a client crashes mid-commit; the next reader resolves its locks")
    t = c.begin()
    t.put(b"acct/alice", b"0")
    t.put(b"acct/dave", b"70")
    t._commit(stop_after="prewrite")  # the "crash": locks written, never committed
    locks = c.backend.kv_scan_lock(c.tso())
    console.print(f"txn {t.start_ts} left {len(locks)} locks (TTL 300 ms) and vanished")
    bal = _balances(c)
    console.print(
        "a reader is not blocked: it pushed the dead txn's min_commit_ts above its own "
        f"snapshot and read around the locks: {bal}, total={sum(bal.values())}"
    )

    def pay_dave(txn: kvstore.Transaction) -> None:
        a = int(txn.get(b"acct/alice") or 0)
        txn.put(b"acct/alice", str(a - 5).encode())
        txn.put(b"acct/dave", b"5")

    c.transaction(pay_dave)
    console.print(
        "a writer met the locks, waited out the TTL, rolled the dead txn back "
        f"(check_txn_status + resolve_lock) and committed: {_balances(c)}"
    )
    console.print(f"locks remaining: {len(c.backend.kv_scan_lock(c.tso()))}")
