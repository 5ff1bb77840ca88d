"""The PD-managed cluster end to end, with real processes.

Each test starts a :class:`kvstore.LocalCluster` (PD node(s) and stores as
``python -m`` processes on free ports, stopped on the way out whatever
happens) and talks to it only through ``kvstore.connect``. Checked:

a. raw and transactional API across Region boundaries after PD-assisted
   splits (split ids come from PD's allocator; the Region directory covers
   the key space exactly once);
b. the bank workload from several client *processes* while stores are
   SIGKILLed and restarted: the total is conserved, and every transfer a
   client saw commit is there (its marker key exists);
c. a client killed between prewrite and commit: readers resolve its locks
   and the transaction is wholly absent (primary never committed) — and one
   killed after the primary's commit is wholly visible;
d. a store down for good: PD re-replicates its Regions onto the remaining
   stores (add learner, promote, remove the dead peer);
e. ``htapkv cluster up/status/down`` as a user runs them, and ``up`` again on
   the same directory brings the data back;
f. 3 PD nodes: SIGKILL the PD leader during a transactional load: the
   clients carry on and commit timestamps stay strictly increasing;
g. mutual TLS on every process: clients with a certificate work, PD and
   stores refuse a client without one;
h. the stores' GC workers follow PD's safe point (old versions go, a read
   below the safe point fails), as their Prometheus metrics show;
i. bad input to the processes: an unknown Region id gets RegionNotFound,
   garbage bytes get typed INVALID_ARGUMENT answers from stores and PD, an
   oversized message RESOURCE_EXHAUSTED; everything still serves after.
j. Raft proposals that outlive their caller's deadline (stores run with a
   20 ms proposal timeout) under transfers, one-key rewrites and scans that
   resolve locks: no transaction is half applied, and no resolver meets a
   key committed by a transaction it was told was rolled back.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import kvstore
from kvstore.client.grpc_backend import GrpcKvBackend
from kvstore.client.pd_client import PdClient
from kvstore.client.routing import new_channel
from kvstore.errors import (
    GcTooEarlyError,
    InvalidArgumentError,
    KVError,
    PdUnavailableError,
    RegionNotFoundError,
)
from kvstore.proto import kvrpcpb_pb2, pdpb_pb2
from kvstore.proto.convert import RequestContext
from kvstore.proto.rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KV_METHODS,
    KV_SERVICE,
    PD_SERVICE,
    channel_options,
)
from kvstore.proto.tls import TlsConfig
from kvstore.server.certs import generate_certs
from kvstore.server.cluster import LocalCluster
from kvstore.types import Peer, RegionEpoch

REPO = Path(__file__).resolve().parent.parent


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = cond()
            if got:
                return got
        except KVError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def start(**options: Any) -> LocalCluster:
        options.setdefault("startup_timeout", 120.0)
        c = LocalCluster(tmp_path / f"cluster{len(started)}", **options)
        started.append(c)
        return c.start()

    try:
        yield start
    finally:
        for c in started:
            c.stop()


def regions_of(cluster: LocalCluster) -> list[Any]:
    return [r for r, _leader in cluster.pd().scan_regions(b"", b"", 0)]


# --------------------------------------------------------------------------- a
def test_raw_and_txn_across_pd_splits(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(stores=3, store_args=["--split-keys", "150"])
    raw = {b"raw/%05d" % i: b"v%d" % i for i in range(600)}
    txn = {b"txn/%05d" % i: b"t%d" % i for i in range(300)}
    with cluster.connect() as client:
        items = list(raw.items())
        for i in range(0, len(items), 50):
            client.raw.batch_put(items[i : i + 50])
        titems = list(txn.items())
        for i in range(0, len(titems), 30):
            with client.begin() as t:
                for k, v in titems[i : i + 30]:
                    t.put(k, v)
        # Splits happen in the background; wait until PD sees several
        # Regions, all fully replicated.
        wait_for(
            lambda: len(regions_of(cluster)) >= 3 and cluster.fully_replicated(), 120, "splits"
        )
        regions = regions_of(cluster)
        # Every key in exactly one Region: the directory tiles the key space.
        assert regions[0].start_key == b"" and regions[-1].end_key == b""
        for left, right in itertools.pairwise(regions):
            assert left.end_key == right.start_key
        assert len({r.id for r in regions}) == len(regions)
        # Scans and batch reads cross Region boundaries.
        assert dict(client.raw.scan(b"raw/", b"raw0", limit=10_000)) == raw
        with client.begin() as t:
            assert dict(t.scan(b"txn/", b"txn0", limit=10_000)) == txn
            got = t.batch_get(list(txn))
        assert got == txn
        assert client.raw.batch_get(list(raw)) == raw


# --------------------------------------------------------------------------- b
N_ACCOUNTS = 8
INITIAL = 100


@pytest.mark.slow
def test_bank_from_client_processes_while_stores_are_killed(
    cluster_factory: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(stores=3)
    with cluster.connect() as client, client.begin() as t:
        for i in range(N_ACCOUNTS):
            t.put(b"acct/%02d" % i, b"%d" % INITIAL)
    outs = [tmp_path / f"client{i}.log" for i in range(3)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "cluster_bank_client.py"),
                cluster.pd_addr,
                str(i),
                str(N_ACCOUNTS),
                "60",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, out in enumerate(outs)
    ]
    try:
        killed = 0
        for name in ("store1", "store2", "store3", "store1"):
            # Kill only after some transfers landed since the last restart.
            before = sum(len(o.read_text().splitlines()) for o in outs if o.exists())
            wait_for(
                lambda b=before: (
                    sum(len(o.read_text().splitlines()) for o in outs if o.exists()) > b + 3
                    or all(p.poll() is not None for p in procs)
                ),
                120,
                "transfers to progress",
            )
            if all(p.poll() is not None for p in procs):
                break
            cluster.kill(name)
            killed += 1
            wait_for(
                lambda b=before: (
                    sum(len(o.read_text().splitlines()) for o in outs if o.exists()) > b + 6
                    or all(p.poll() is not None for p in procs)
                ),
                120,
                "transfers to progress with a store down",
            )
            cluster.restart(name)
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
        assert killed >= 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with cluster.connect() as client, client.begin() as t:
        balances = {k: int(v) for k, v in t.scan(b"acct/", b"acct0", limit=100)}
        markers = dict(t.scan(b"done/", b"done0", limit=100_000))
    assert sum(balances.values()) == N_ACCOUNTS * INITIAL
    assert all(v >= 0 for v in balances.values())
    acked = 0
    for i, out in enumerate(outs):
        for line in out.read_text().splitlines():
            status, n = line.split()[:2]
            if status == "ok":
                acked += 1
                assert b"done/%d/%s" % (i, n.encode()) in markers, f"client {i} transfer {n} lost"
    assert acked > 0


# --------------------------------------------------------------------------- c
ABANDON = """
import sys, os, kvstore
with kvstore.connect(sys.argv[1]) as c:
    t = c.begin()
    t.put(b"half/a", b"1"); t.put(b"half/b", b"1"); t.put(b"half/c", b"1")
    t._commit(stop_after=sys.argv[2])
    os._exit(0)  # crash: no rollback, no secondary commit, no heartbeat
"""


@pytest.mark.parametrize(("stop_after", "visible"), [("prewrite", False), ("primary", True)])
def test_client_killed_mid_commit_is_all_or_nothing(
    cluster_factory: Callable[..., LocalCluster], stop_after: str, visible: bool
) -> None:
    cluster = cluster_factory(stores=3)
    subprocess.run(
        [sys.executable, "-c", ABANDON, cluster.pd_addr, stop_after],
        check=True,
        timeout=120,
        cwd=REPO,
    )
    with cluster.connect(lock_wait_timeout=30.0) as client, client.begin() as t:
        got = t.batch_get([b"half/a", b"half/b", b"half/c"])
    expected = {b"half/a": b"1", b"half/b": b"1", b"half/c": b"1"} if visible else {}
    assert got == expected


# --------------------------------------------------------------------------- j
@pytest.mark.slow
def test_txns_stay_atomic_when_proposals_outlive_their_deadline(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """A caller's proposal deadline passing says nothing of whether its entry
    applies: it usually does, later. Before the stores kept a write's latches
    until then, a TTL check computed behind a primary's held-up commit
    decided "rolled back" and applied after the commit: scans saw totals off
    and resolvers hit CommittedError within seconds."""
    import random
    import traceback

    from kvstore.errors import KeyIsLockedError, TxnAbortedError, WriteConflictError

    n, initial, seconds = 30, 100, 12.0
    cluster = cluster_factory(
        stores=3, store_args=["--proposal-timeout", "0.02", "--split-keys", "20"]
    )
    keys = [b"acct/%02d" % i for i in range(n)]
    clients = [cluster.connect(lock_ttl_ms=50, lock_wait_timeout=5.0) for _ in range(3)]
    errors: list[str] = []
    counts = {"transfers": 0, "rewrites": 0, "scans": 0}
    mu = threading.Lock()
    try:
        clients[0].transaction(lambda t: [t.put(k, b"%d" % initial) for k in keys])
        # Enough other keys for a few Regions: transfers span them.
        for j in range(0, 200, 50):
            clients[0].transaction(
                lambda t, j=j: [t.put(b"fill/%03d" % i, b"x") for i in range(j, j + 50)]
            )
        stop = time.monotonic() + seconds

        def guarded(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
                with mu:
                    counts[what] += 1
            except (WriteConflictError, TxnAbortedError, KeyIsLockedError):
                pass  # contention, not a failure
            except Exception as e:
                with mu:
                    errors.append("".join(traceback.format_exception(e)))

        def transfers(c: kvstore.Client, rng: random.Random) -> None:
            while time.monotonic() < stop:
                ks = rng.sample(keys, rng.randint(2, 5))

                def body(t: kvstore.Transaction, ks: list[bytes] = ks) -> None:
                    got = t.batch_get(ks)
                    amount = rng.randint(0, 5)
                    t.put(ks[0], b"%d" % (int(got[ks[0]]) - amount))
                    t.put(ks[1], b"%d" % (int(got[ks[1]]) + amount))
                    for k in ks[2:]:
                        t.put(k, got[k])

                def abandon(body: Callable[[kvstore.Transaction], None] = body) -> None:
                    # A client gone mid-commit: its locks are for others to resolve.
                    t = c.begin()
                    body(t)
                    t._commit(stop_after=rng.choice(["prewrite", "primary"]))

                def run(body: Callable[[kvstore.Transaction], None] = body) -> None:
                    c.transaction(body)

                guarded("transfers", abandon if rng.random() < 0.1 else run)

        def rewrites(c: kvstore.Client, rng: random.Random) -> None:
            while time.monotonic() < stop:
                k = keys[min(int(rng.paretovariate(1.2)) - 1, n - 1)]  # hot keys

                def body(t: kvstore.Transaction, k: bytes = k) -> None:
                    t.put(k, t.get(k) or b"0")

                def run(body: Callable[[kvstore.Transaction], None] = body) -> None:
                    c.transaction(body)

                guarded("rewrites", run)

        def scans(c: kvstore.Client) -> None:
            def one() -> None:
                with c.begin() as t:
                    total = sum(int(v) for _, v in t.scan(b"acct/", b"acct0"))
                if total != n * initial:
                    raise AssertionError(f"a snapshot sums to {total}, not {n * initial}")

            while time.monotonic() < stop:
                guarded("scans", one)

        threads = [
            threading.Thread(target=transfers, args=(clients[i], random.Random(i)))
            for i in range(2)
        ]
        threads += [
            threading.Thread(target=rewrites, args=(clients[i], random.Random(10 + i)))
            for i in range(2)
        ]
        threads.append(threading.Thread(target=scans, args=(clients[2],)))
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert min(counts.values()) > 0, counts
        with cluster.connect(lock_wait_timeout=30.0) as client, client.begin() as t:
            assert sum(int(v) for _, v in t.scan(b"acct/", b"acct0")) == n * initial
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------- d
@pytest.mark.slow
def test_store_down_for_good_is_rereplicated(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(stores=4, pd_args=["--max-store-down-time", "3"])
    with cluster.connect() as client:
        client.raw.batch_put([(b"k%03d" % i, b"v") for i in range(100)])
        pd = cluster.pd()
        region, _ = pd.scan_regions(b"", b"", 0)[0]
        victim = next(p.store_id for p in region.peers if not p.is_learner)
        cluster.kill(cluster.name_of_store(victim))

        def rereplicated() -> bool:
            for r, leader in pd.scan_regions(b"", b"", 0):
                voters = {p.store_id for p in r.peers if not p.is_learner}
                if victim in voters or len(voters) != 3 or not leader:
                    return False
            return True

        wait_for(rereplicated, 120, "PD to move the dead store's replicas")
        assert client.raw.batch_get([b"k%03d" % i for i in range(100)]) == {
            b"k%03d" % i: b"v" for i in range(100)
        }


# --------------------------------------------------------------------------- e
def _htapkv(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_cluster_up_status_down_and_up_again(tmp_path: Path) -> None:
    data = tmp_path / "c"
    try:
        up = _htapkv("cluster", "up", "--data-dir", str(data), "--stores", "3")
        assert up.returncode == 0, up.stderr
        pd_addr = up.stdout.split("PD: ", 1)[1].split()[0]
        assert (data / "cluster.json").exists()
        with kvstore.connect(pd_addr) as client:
            client.raw.put(b"survives", b"restart")
        status = _htapkv("cluster", "status", "--pd", pd_addr)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "Regions" in status.stdout and "leader" in status.stdout
        down = _htapkv("cluster", "down", "--data-dir", str(data))
        assert down.returncode == 0 and "stopped 4" in down.stdout, down.stdout + down.stderr
        up2 = _htapkv("cluster", "up", "--data-dir", str(data))
        assert up2.returncode == 0, up2.stderr
        assert up2.stdout.split("PD: ", 1)[1].split()[0] == pd_addr  # same ports
        with kvstore.connect(pd_addr) as client:
            assert client.raw.get(b"survives") == b"restart"
    finally:
        if (data / "cluster.json").exists():
            _htapkv("cluster", "down", "--data-dir", str(data))


# --------------------------------------------------------------------------- f
@pytest.mark.slow
def test_pd_leader_killed_during_load(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(pd=3, stores=3)
    stop = threading.Event()
    commits: list[list[int]] = [[] for _ in range(3)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with cluster.connect() as client:
                n = 0
                while not stop.is_set():
                    t = client.begin()
                    t.put(b"pdload/%d/%d" % (i, n), b"x")
                    t.commit()
                    commits[i].append(t.commit_ts)
                    n += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for _round in range(2):
            before = sum(map(len, commits))
            wait_for(lambda b=before: sum(map(len, commits)) > b + 20 or errors, 60, "commits")
            name = cluster.kill("pd-leader")[0]
            t0 = time.monotonic()
            after = sum(map(len, commits))
            wait_for(
                lambda a=after: sum(map(len, commits)) > a + 5 or errors,
                60,
                "commits after PD failover",
            )
            print(
                f"PD leader {name} killed: clients commit again after {time.monotonic() - t0:.2f} s"
            )
            cluster.restart(name)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    for seq in commits:
        assert seq == sorted(seq) and len(set(seq)) == len(seq)
    everything = [ts for seq in commits for ts in seq]
    assert len(set(everything)) == len(everything)


# --------------------------------------------------------------------------- g
def test_cluster_with_mutual_tls(
    cluster_factory: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    pki = generate_certs(tmp_path / "pki")
    server = TlsConfig(str(pki["ca"]), str(pki["server_cert"]), str(pki["server_key"]))
    client_tls = TlsConfig(str(pki["ca"]), str(pki["client_cert"]), str(pki["client_key"]))
    cluster = cluster_factory(stores=3, tls=server, client_tls=client_tls)
    with cluster.connect() as client:
        client.raw.put(b"secret", b"ok")
        with client.begin() as t:
            t.put(b"tx", b"1")
    with kvstore.connect(
        cluster.pd_addr, tls_ca=client_tls.ca, tls_cert=client_tls.cert, tls_key=client_tls.key
    ) as client:
        assert client.raw.get(b"secret") == b"ok"
    # Without a certificate: PD and every store refuse at the handshake.
    with pytest.raises(PdUnavailableError):
        PdClient(cluster.pd_addrs, timeout=3.0).get_ts()
    m = KV_METHODS["RawGet"]
    for info in cluster.processes():
        if info.role == "store":
            ch = new_channel(info.addr)
            call = ch.unary_unary(
                m.path,
                request_serializer=m.request.SerializeToString,
                response_deserializer=m.response.FromString,
            )
            try:
                with pytest.raises(grpc.RpcError) as e:
                    call(m.request(key=b"secret"), timeout=3.0)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                ch.close()


# --------------------------------------------------------------------------- h
def _metric(addr: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_gc_worker_follows_pd_safe_point_and_metrics_show_it(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    cluster = cluster_factory(
        stores=3, store_args=["--gc-interval", "0.3"], pd_args=["--gc-life-time", "1"]
    )
    with cluster.connect() as client:
        old = client.begin()
        for i in range(5):
            with client.begin() as t:
                t.put(b"gc/key", b"v%d" % i)
        stores = [p for p in cluster.processes() if p.role == "store"]
        assert all(_metric(p.status_addr, "htapkv_store_regions") >= 1 for p in stores)
        # PD moves the safe point to now - 1 s; the leader's GC worker drops
        # the 4 overwritten versions.
        wait_for(
            lambda: (
                sum(
                    _metric(p.status_addr, "htapkv_pd_worker_gc_versions_removed_total")
                    for p in stores
                )
                >= 4
            ),
            60,
            "GC to remove the old versions",
        )
        with pytest.raises(GcTooEarlyError):
            old.get(b"gc/key")
        with client.begin() as t:
            assert t.get(b"gc/key") == b"v4"


# --------------------------------------------------------------------------- i
def test_bad_input_against_cluster_processes(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(stores=3)
    store = next(p for p in cluster.processes() if p.role == "store")
    # An unknown Region id: a typed RegionNotFound, not a crash.
    unknown = RequestContext(987654321, RegionEpoch(1, 1), Peer(1, store.store_id))
    backend = GrpcKvBackend(store.addr, lambda: unknown)
    try:
        with pytest.raises(RegionNotFoundError):
            backend.raw_get(b"k")
    finally:
        backend.close()
    # Garbage bytes to a store and to PD: typed INVALID_ARGUMENT answers.
    garbage = b"\xff\xfe\x00\x01garbage\x80\x80\x80"
    with grpc.insecure_channel(store.addr, options=channel_options()) as ch:
        resp = kvrpcpb_pb2.RawPutResponse.FromString(
            ch.unary_unary(f"/{KV_SERVICE}/RawPut")(garbage, timeout=10)
        )
        assert resp.error.WhichOneof("kind") == "invalid_argument"
        # A message over the server's limit: RESOURCE_EXHAUSTED, nothing written.
        big = kvrpcpb_pb2.RawPutRequest(key=b"big", value=b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 1))
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(f"/{KV_SERVICE}/RawPut")(big.SerializeToString(), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(cluster.pd_addrs[0], options=channel_options()) as ch:
        resp_pd = pdpb_pb2.GetRegionResponse.FromString(
            ch.unary_unary(f"/{PD_SERVICE}/GetRegion")(garbage, timeout=10)
        )
        assert resp_pd.header.error.type == pdpb_pb2.INVALID_ARGUMENT
    # Every process is still serving.
    with cluster.connect() as client:
        client.raw.put(b"still", b"here")
        assert client.raw.get(b"still") == b"here"
        assert client.raw.get(b"big") is None
        with pytest.raises(InvalidArgumentError):
            client.raw.put(b"k" * 5000, b"v")  # keys are limited to 4 KiB
