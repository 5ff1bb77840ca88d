"""A replicated store process: ``htapkv server store`` (or
``python -m kvstore.server.store_server``).

Serves the Kv service (:class:`~kvstore.server.region_handler.RegionKvHandler`)
and the Debug service (Regions hosted here, replica checksums) over gRPC, and
the Raft traffic of its Region peers on its one Raft port.

Start-up without a placement driver (static membership): the process binds
its Raft and Kv ports (port 0: any free one), publishes them in
``DATA_DIR/addrs.json``, then waits for ``--cluster-file``: JSON mapping every
store id to ``{"raft": addr, "kv": addr}``. Whoever launches the cluster
writes it once every store has published. On a restart the store binds the
same ports again (from ``addrs.json``) and reads the cluster from its data
directory, so it can rejoin on its own. ``DATA_DIR/ready`` appears once it
serves.

Start-up with a placement driver (``--pd``, what ``htapkv cluster up`` runs):
the store gets its id from PD on first start (kept in
``DATA_DIR/store_ident.json`` with the cluster id, so a data directory is never
served to another cluster), registers its Kv, Raft and status addresses, and
learns the others' from PD. The first store of a new cluster bootstraps it
with a one-peer Region over the whole key space; PD's replica checker then
adds the other replicas. A :class:`~kvstore.server.pd_worker.PdWorker` keeps
PD informed and runs its operators; ``/metrics`` on the status port.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from kvstore.errors import InvalidArgumentError
from kvstore.proto import debugpb_pb2
from kvstore.proto.convert import region_to_pb
from kvstore.proto.tls import add_tls_arguments
from kvstore.raftstore import Store, StoreConfig
from kvstore.server.kv_service import serve
from kvstore.server.region_handler import RegionKvHandler
from kvstore.storage import DATA_CFS
from raft import RaftConfig

log = logging.getLogger(__name__)

DEBUG_SERVICE = "htapkv.debugpb.Debug"


STORAGE_FAILURE_EXIT = 70  # EX_SOFTWARE: what a supervisor sees


def exit_on_storage_failure(error: BaseException) -> None:
    """Fail-stop: the Raft log could not be fsync'd, so this process must
    acknowledge nothing more (and RocksDB is read-only after a failed sync).
    Exit at once, without the orderly shutdown that would write again; a
    restart recovers from what is really on disk (TiKV panics likewise)."""
    logging.getLogger(__name__).critical(
        "storage failure, exiting with status %d: %s", STORAGE_FAILURE_EXIT, error
    )
    logging.shutdown()
    os._exit(STORAGE_FAILURE_EXIT)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data``, durably: a power loss leaves either
    the old file or the new one, never an empty one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DebugService:
    def __init__(self, store: Store, kv_addrs: dict[int, str]) -> None:
        # kv_addrs: store id -> Kv address, kept current by the caller.
        self.store = store
        self.kv_addrs = kv_addrs

    def get_regions(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        resp = debugpb_pb2.GetRegionsResponse(store_id=self.store.store_id)
        for sid, addr in self.kv_addrs.items():
            resp.store_addrs[sid] = addr
        for peer in list(self.store.peers.values()):
            info = resp.regions.add()
            info.region.CopyFrom(region_to_pb(peer.region))
            info.is_leader = peer.is_leader()
            info.applied_index = peer.applied_index
            try:
                info.leader_store_id = self.store.not_leader(peer).leader_store_id
            except Exception:  # leader unknown during an election
                info.leader_store_id = 0
        return resp.SerializeToString()

    def region_checksum(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        resp = debugpb_pb2.RegionChecksumResponse()
        try:
            req = debugpb_pb2.RegionChecksumRequest.FromString(data)
        except DecodeError as e:
            resp.error = f"malformed request: {e}"
            return resp.SerializeToString()
        peer = self.store.peers.get(req.region_id)
        if peer is None:
            resp.error = f"region {req.region_id} not found"
            return resp.SerializeToString()

        # Taken in the Raft driver thread, between two applies: the digest and
        # the applied index describe the same state.
        def digest() -> tuple[str, int, int]:
            h = hashlib.sha256()
            n = 0
            r = peer.region
            for cf in DATA_CFS:
                for k, v in self.store.engine.scan(cf, r.start_key, r.end_key or None):
                    h.update(b"%s|%d|%s|%d|%s" % (cf.encode(), len(k), k, len(v), v))
                    n += 1
            return h.hexdigest(), peer.applied_index, n

        resp.checksum, resp.applied_index, resp.keys = self.store.driver.call(digest)
        return resp.SerializeToString()

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            DEBUG_SERVICE,
            {
                "GetRegions": grpc.unary_unary_rpc_method_handler(self.get_regions),
                "RegionChecksum": grpc.unary_unary_rpc_method_handler(self.region_checksum),
            },
        )


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True)
    p.add_argument("--pd", help="PD client address(es), comma-separated")
    p.add_argument("--addr", help="host:port of the Kv service (with --pd; port 0: any)")
    p.add_argument(
        "--raft-addr", help="host:port of the Raft port (default: --addr's host, any port)"
    )
    p.add_argument("--status-addr", help="host:port of /metrics (default: --addr's host, any port)")
    p.add_argument("--labels", default="", help="key=value,... (engine=columnar: a columnar store)")
    p.add_argument(
        "--store-heartbeat", type=float, default=1.0, help="seconds between store heartbeats"
    )
    p.add_argument(
        "--region-heartbeat", type=float, default=2.0, help="seconds between region heartbeats"
    )
    p.add_argument("--gc-interval", type=float, default=10.0, help="seconds between GC passes")
    p.add_argument(
        "--batch-workers",
        type=int,
        default=128,
        help="threads running BatchCommands requests (bounds proposals in flight)",
    )
    p.add_argument("--store-id", type=int, help="static mode (no --pd): this store's id")
    add_tls_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="interface for both ports")
    p.add_argument("--cluster-file", help="JSON: store id -> {raft, kv} (first start)")
    p.add_argument("--secret", default=os.environ.get("HTAPKV_CLUSTER_SECRET"))
    p.add_argument("--split-keys", type=int, default=0, help="split Regions above N keys")
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=10_000,
        help="compact a Region's Raft log into a snapshot past N entries",
    )
    p.add_argument(
        "--proposal-timeout",
        type=float,
        default=RaftConfig.proposal_timeout,
        help="seconds a request waits for its Raft entry before answering with an unknown "
        "outcome (a write still keeps its keys latched until the entry is applied or gone)",
    )
    p.add_argument(
        "--raft-dial-file",
        help="JSON: peer Raft address -> address to dial instead (fault-test proxies)",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_store_arguments(p)
    args = p.parse_args(argv)
    raise SystemExit(run_store(args))


def run_store(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s store %(name)s %(message)s")
    if args.pd:
        from kvstore.server.store_node import run_with_pd

        return run_with_pd(args)
    if args.store_id is None:
        raise InvalidArgumentError("--store-id is needed without --pd")
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "ready").unlink(missing_ok=True)
    addrs_path = data / "addrs.json"
    previous = json.loads(addrs_path.read_text()) if addrs_path.exists() else {}
    raft_addr = previous.get("raft", f"{args.host}:0")
    kv_addr = previous.get("kv", f"{args.host}:0")

    store = Store(
        StoreConfig(
            store_id=args.store_id,
            data_dir=str(data),
            raft_addr=raft_addr,
            secret=args.secret,
            split_threshold_keys=args.split_keys,
            raft=RaftConfig(
                snapshot_entries=args.snapshot_entries, proposal_timeout=args.proposal_timeout
            ),
        )
    )
    kv_addrs: dict[int, str] = {}
    bound = serve(RegionKvHandler(store), kv_addr, batch_chunk=1)
    bound.server.add_generic_rpc_handlers((DebugService(store, kv_addrs).rpc_handler(),))
    write_json_atomic(addrs_path, {"raft": store.raft_addr, "kv": bound.address})

    cluster_copy = data / "cluster.json"
    source = cluster_copy if cluster_copy.exists() else Path(args.cluster_file or cluster_copy)
    while not source.exists():  # the launcher writes it once every store published
        time.sleep(0.02)
    cluster = {int(k): v for k, v in json.loads(source.read_text()).items()}
    if source != cluster_copy:
        write_json_atomic(cluster_copy, {str(k): v for k, v in cluster.items()})
    kv_addrs.update({sid: v["kv"] for sid, v in cluster.items()})
    if args.raft_dial_file:  # written by the launcher before the cluster file
        store.driver.hub.dial.update(json.loads(Path(args.raft_dial_file).read_text()))
    store.start({sid: v["raft"] for sid, v in cluster.items()})
    (data / "ready").write_text("1")
    log.info(
        "store %d serving Kv on %s, Raft on %s", store.store_id, bound.address, store.raft_addr
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A bounded wait: an untimed one can miss a signal that arrives while the
    # process is stopped (SIGSTOP) and never exit.
    while not stop.wait(0.5):
        pass
    bound.stop(grace=1.0)
    store.close()
    return 0


if __name__ == "__main__":
    main()
