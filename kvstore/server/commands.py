"""``htapkv server ...`` and ``htapkv cluster ...``: the process commands.

``server pd`` / ``server store`` run one process in the foreground (what a
deployment's service manager starts); ``cluster up`` / ``status`` / ``down``
manage a whole local cluster in the background
(:class:`~kvstore.server.cluster.LocalCluster`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kvstore.proto.tls import add_tls_arguments, tls_from_args


def register_server(sub: Any) -> None:
    p = sub.add_parser("server", help="run one server process (pd, store, columnar)")
    roles = p.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True

    pd = roles.add_parser("pd", help="a placement driver node")
    from kvstore.server.pd_server import add_pd_arguments, run_pd

    add_pd_arguments(pd)
    pd.set_defaults(func=run_pd)

    col = roles.add_parser("columnar", help="a columnar node: Arrow learners of every Region")
    from kvstore.server.columnar_node import add_columnar_arguments, run_columnar

    add_columnar_arguments(col)
    col.set_defaults(func=run_columnar)

    store = roles.add_parser("store", help="a store: Region replicas and the Kv service")
    from kvstore.server.store_server import add_store_arguments, run_store

    add_store_arguments(store)
    store.set_defaults(func=run_store)


def register_cluster(sub: Any) -> None:
    p = sub.add_parser("cluster", help="start, inspect and stop a local cluster")
    cmds = p.add_subparsers(dest="cluster_command", metavar="COMMAND")
    cmds.required = True

    up = cmds.add_parser("up", help="start PD, stores (and columnar nodes) in the background")
    up.add_argument("--data-dir", required=True)
    up.add_argument("--pd", type=int, default=1, choices=(1, 3), help="PD nodes")
    up.add_argument("--stores", type=int, default=3)
    up.add_argument("--columnar", type=int, default=0, choices=(0, 1))
    up.add_argument("--base-port", type=int, help="first port (default: free ports)")
    up.add_argument("--host", default="127.0.0.1")
    up.set_defaults(func=_up)

    status = cmds.add_parser("status", help="stores, Regions, leaders and health")
    status.add_argument("--pd", required=True, help="PD address(es), comma-separated")
    add_tls_arguments(status)
    status.set_defaults(func=_status)

    down = cmds.add_parser("down", help="stop the cluster started in --data-dir")
    down.add_argument("--data-dir", required=True)
    down.set_defaults(func=_down)

    certs = cmds.add_parser("certs", help="create a CA and certificates for mutual TLS")
    certs.add_argument("--out", required=True, help="directory for the PEM files")
    certs.add_argument(
        "--hosts", default="127.0.0.1,localhost", help="names/IPs the servers answer on"
    )
    certs.set_defaults(func=_certs)


def _up(args: argparse.Namespace) -> int:
    from kvstore.server.cluster import LocalCluster

    cluster = LocalCluster(
        args.data_dir,
        pd=args.pd,
        stores=args.stores,
        columnar=args.columnar,
        base_port=args.base_port,
        host=args.host,
        detach=True,
    )
    cluster.start()
    print(f"PD: {cluster.pd_addr}")
    for info in cluster.processes():
        print(f"  {info.name:8} {info.role:6} {info.addr:22} pid {info.pid}")
    print(f"wrote {cluster.data_dir / 'cluster.json'}")
    print(f"stop with: htapkv cluster down --data-dir {args.data_dir}")
    cluster.stop_clients()
    return 0


def _status(args: argparse.Namespace) -> int:
    from kvstore.server.status import print_status

    return print_status(args.pd, out=sys.stdout, tls=tls_from_args(args))


def _down(args: argparse.Namespace) -> int:
    from kvstore.server.cluster import stop_detached

    stopped = stop_detached(args.data_dir)
    print(f"stopped {len(stopped)} process(es): {', '.join(stopped) or 'none running'}")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from kvstore.server.certs import generate_certs

    paths = generate_certs(args.out, [h.strip() for h in args.hosts.split(",") if h.strip()])
    for name, path in paths.items():
        print(f"{name:12} {path}")
    print("servers: --tls-ca ca.pem --tls-cert server.pem --tls-key server-key.pem")
    print("clients: --tls-ca ca.pem --tls-cert client.pem --tls-key client-key.pem")
    return 0
