"""A store process that belongs to a PD-managed cluster (``--pd``).

Start-up order, each step safe to repeat after a crash:

1. identity: ``DATA_DIR/store_ident.json`` (cluster id + store id), or a new
   store id from PD's allocator, written before anything else is;
2. bind the Kv, Raft and status ports (again the same ones after a restart,
   from ``DATA_DIR/addrs.json``);
3. register with PD (``PutStore``) and learn the other stores' Raft addresses;
4. start the Region peers found on disk; if PD says the cluster is not
   bootstrapped, try to bootstrap it with a one-peer Region (one store wins;
   the others get ``ALREADY_BOOTSTRAPPED`` and wait for PD to give them
   replicas);
5. start the :class:`~kvstore.server.pd_worker.PdWorker` and write
   ``DATA_DIR/ready``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kvstore.client.pd_client import PdClient
from kvstore.errors import InvalidArgumentError, KVError
from kvstore.proto import metapb_pb2
from kvstore.proto.tls import TlsConfig, tls_from_args
from kvstore.raftstore import Store, StoreConfig
from kvstore.server.kv_service import serve
from kvstore.server.metrics import StoreCollector, serve_metrics
from kvstore.server.pd_worker import PdWorker, PdWorkerConfig
from kvstore.server.region_handler import RegionKvHandler
from kvstore.server.store_server import DebugService, exit_on_storage_failure, write_json_atomic
from kvstore.types import Peer, Region, RegionEpoch
from raft import RaftConfig

log = logging.getLogger(__name__)

STORE_VERSION = "htapkv-0.1"


def parse_labels(text: str) -> list[metapb_pb2.StoreLabel]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"label {item!r} is not key=value")
        out.append(metapb_pb2.StoreLabel(key=key, value=value))
    return out


def _host(addr: str) -> str:
    return addr.rpartition(":")[0] or "127.0.0.1"


def load_or_alloc_ident(data: Path, pd: PdClient) -> int:
    """This data directory's store id; a fresh one from PD on first start."""
    path = data / "store_ident.json"
    if path.exists():
        ident = json.loads(path.read_text())
        if ident["cluster_id"] != pd.cluster_id:
            raise InvalidArgumentError(
                f"{data} belongs to cluster {ident['cluster_id']}, but PD serves cluster "
                f"{pd.cluster_id}: use another --data-dir"
            )
        return int(ident["store_id"])
    store_id = pd.alloc_id()
    write_json_atomic(path, {"cluster_id": pd.cluster_id, "store_id": store_id})
    return store_id


def maybe_bootstrap(pd: PdClient, meta: metapb_pb2.Store) -> Region | None:
    """Bootstrap the cluster with this store and a first Region (one peer,
    here, over the whole key space) if nobody has yet; return that Region.
    If this process dies before it hosts the Region, PD's store heartbeat
    gives it back (the directory names a peer here)."""
    if pd.is_bootstrapped():
        return None
    if any((lb.key, lb.value) == ("engine", "columnar") for lb in meta.labels):
        # A columnar node holds learners only: had it bootstrapped the
        # cluster, the first Region's voter would be here, and PD's replica
        # checker (which never places a voter on a columnar store) could not
        # complete it. Wait for a row store to bootstrap instead.
        delay = 0.05
        while not pd.is_bootstrapped():
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        return None
    region = Region(pd.alloc_id(), b"", b"", RegionEpoch(1, 1), (Peer(pd.alloc_id(), meta.id),))
    try:
        pd.bootstrap(meta, region)
    except KVError as e:  # another store won the race
        if not pd.is_bootstrapped():
            raise
        log.info("store %d: cluster bootstrapped by another store (%s)", meta.id, e)
        return None
    log.info("store %d bootstrapped the cluster with region %d", meta.id, region.id)
    return region


def run_with_pd(args: argparse.Namespace, *, columnar: bool = False) -> int:
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "ready").unlink(missing_ok=True)
    tls = tls_from_args(args)
    pd = PdClient([a.strip() for a in args.pd.split(",") if a.strip()], tls=tls)
    try:
        return _serve(args, data, pd, tls, columnar)
    finally:
        pd.close()


def _serve(
    args: argparse.Namespace, data: Path, pd: PdClient, tls: TlsConfig | None, columnar: bool
) -> int:
    store_id = load_or_alloc_ident(data, pd)
    addrs_path = data / "addrs.json"
    previous = json.loads(addrs_path.read_text()) if addrs_path.exists() else {}
    host = _host(args.addr or "127.0.0.1:0")
    kv_addr = previous.get("kv", args.addr or f"{host}:0")
    raft_addr = previous.get("raft", args.raft_addr or f"{host}:0")
    status_addr = previous.get("status", args.status_addr or f"{host}:0")

    store = Store(
        StoreConfig(
            store_id=store_id,
            data_dir=str(data),
            raft_addr=raft_addr,
            secret=args.secret,
            split_threshold_keys=args.split_keys,
            raft=RaftConfig(
                snapshot_entries=args.snapshot_entries, proposal_timeout=args.proposal_timeout
            ),
            bootstrap=False,
            id_allocator=pd.alloc_id,
            on_fatal=exit_on_storage_failure,
        )
    )
    observer: Any = None
    if columnar:  # imported here: a row store never loads pyarrow
        from columnar import ColumnarStore
        from kvstore.server.columnar_node import ColumnarObserver

        # Set before store.start(): every Region's replica is fed from its first apply.
        observer = ColumnarObserver(store.engine, ColumnarStore())
        store.config.apply_observer = observer
    worker = PdWorker(
        store,
        pd,
        str(data),
        PdWorkerConfig(
            store_heartbeat_s=args.store_heartbeat,
            region_heartbeat_s=args.region_heartbeat,
            gc_interval_s=args.gc_interval,
        ),
    )
    kv_addrs: dict[int, str] = {}
    # Each batched request blocks its worker until its Raft entry commits, so
    # the workers bound the proposals in flight: enough of them lets group
    # commit merge many requests per entry.
    bound = serve(
        RegionKvHandler(store),
        kv_addr,
        batch_chunk=1,
        batch_workers=args.batch_workers,
        tls=tls,
    )
    bound.server.add_generic_rpc_handlers((DebugService(store, kv_addrs).rpc_handler(),))
    collectors: list[Any] = [StoreCollector(store, worker)]
    col_service: Any = None
    stop_compaction = threading.Event()
    if observer is not None:
        from kvstore.server.columnar_node import (
            ColumnarService,
            FreshnessCollector,
            compaction_loop,
        )

        col_service = ColumnarService(store, observer.columnar, pd, tls)
        bound.server.add_generic_rpc_handlers((col_service.rpc_handler(),))
        collectors.append(FreshnessCollector(col_service))
        threading.Thread(
            target=compaction_loop,
            args=(observer.columnar, stop_compaction),
            name="columnar-compaction",
            daemon=True,
        ).start()
    metrics_server, status_bound = serve_metrics(status_addr, *collectors)
    write_json_atomic(
        addrs_path, {"raft": store.raft_addr, "kv": bound.address, "status": status_bound}
    )
    meta = metapb_pb2.Store(
        id=store_id,
        address=bound.address,
        raft_address=store.raft_addr,
        status_address=status_bound,
        labels=parse_labels(args.labels),
        version=STORE_VERSION,
        start_timestamp=int(time.time()),
    )
    try:
        first = maybe_bootstrap(pd, meta)
        pd.put_store(meta)
        stores = pd.get_all_stores()
        kv_addrs.update({s.id: s.address for s in stores})
        worker.kv_addrs = kv_addrs
        store.start({s.id: s.raft_address for s in stores if s.raft_address})
        if first is not None:
            store.create_peer(first)
        worker.start()
        (data / "ready").write_text("1")
        log.info(
            "store %d serving Kv on %s, Raft on %s, metrics on %s (PD %s)",
            store_id,
            bound.address,
            store.raft_addr,
            status_bound,
            args.pd,
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        # Bounded waits: an untimed one can miss a signal that arrives while
        # the process is stopped (SIGSTOP) and never exit.
        while not stop.wait(0.5):
            pass
    finally:
        stop_compaction.set()
        worker.stop()
        bound.stop(grace=1.0)
        if col_service is not None:
            col_service.close()
        metrics_server.shutdown()
        store.close()
    return 0


__all__ = ["load_or_alloc_ident", "maybe_bootstrap", "parse_labels", "run_with_pd"]
