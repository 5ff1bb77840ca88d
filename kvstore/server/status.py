"""``htapkv cluster status``: what PD knows, and whether each store answers."""

from __future__ import annotations

from typing import TextIO

import grpc
from rich.console import Console
from rich.table import Table

from kvstore import codec
from kvstore.client.pd_client import PdClient
from kvstore.client.routing import new_channel
from kvstore.proto import columnarpb_pb2
from kvstore.proto.tls import TlsConfig

PROBE_TIMEOUT_S = 1.0


def _answers(addr: str, tls: TlsConfig | None) -> bool:
    ch = new_channel(addr, tls)
    try:
        grpc.channel_ready_future(ch).result(timeout=PROBE_TIMEOUT_S)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        ch.close()


def _print_freshness(console: Console, store_id: int, addr: str, tls: TlsConfig | None) -> None:
    ch = new_channel(addr, tls)
    try:
        resp = columnarpb_pb2.StatusResponse.FromString(
            ch.unary_unary("/htapkv.columnarpb.Columnar/Status")(b"", timeout=PROBE_TIMEOUT_S * 5)
        )
    except grpc.RpcError as e:
        console.print(f"Columnar freshness (store {store_id}): [red]unreachable[/red] ({e.code()})")
        return
    finally:
        ch.close()
    t = Table(
        title=f"Columnar freshness (store {store_id}, tables: {', '.join(resp.tables) or '-'})"
    )
    for col in ("region", "applied index", "leader read index", "lag entries", "lag ms"):
        t.add_column(col)
    for r in resp.regions:
        t.add_row(
            str(r.region_id),
            str(r.applied_index),
            str(r.leader_index or "-"),
            str(r.lag_entries),
            f"{r.lag_ms:.0f}",
        )
    console.print(t)
    if resp.storage:
        s = Table(title=f"Columnar storage (store {store_id})")
        for col in ("table", "stable rows", "delta parts", "undecoded rows"):
            s.add_column(col)
        for ts in resp.storage:
            s.add_row(ts.table, f"{ts.stable_rows:,}", str(ts.delta_parts), f"{ts.raw_rows:,}")
        console.print(s)


def print_status(pd_addrs: str, out: TextIO, tls: TlsConfig | None = None) -> int:
    pd = PdClient([a.strip() for a in pd_addrs.split(",") if a.strip()], tls=tls)
    console = Console(file=out, width=120)
    try:
        members, leader = pd.members()
        t = Table(title=f"PD (cluster {pd.cluster_id})")
        for col in ("name", "client", "peer", "role"):
            t.add_column(col)
        for m in members:
            is_leader = leader is not None and m.client_addr == leader.client_addr
            t.add_row(m.name, m.client_addr, m.peer_addr, "leader" if is_leader else "follower")
        console.print(t)

        regions = pd.scan_regions(b"", b"", 0)
        leaders: dict[int, int] = {}
        replicas: dict[int, int] = {}
        for region, lead in regions:
            if lead:
                leaders[lead] = leaders.get(lead, 0) + 1
            for p in region.peers:
                replicas[p.store_id] = replicas.get(p.store_id, 0) + 1
        t = Table(title="Stores")
        for col in ("id", "address", "raft", "metrics", "labels", "regions", "leaders", "health"):
            t.add_column(col)
        unhealthy = 0
        for s in pd.get_all_stores():
            ok = _answers(s.address, tls)
            unhealthy += not ok
            labels = ",".join(f"{lb.key}={lb.value}" for lb in s.labels)
            t.add_row(
                str(s.id),
                s.address,
                s.raft_address,
                s.status_address,
                labels,
                str(replicas.get(s.id, 0)),
                str(leaders.get(s.id, 0)),
                "up" if ok else "[red]unreachable[/red]",
            )
        console.print(t)

        t = Table(title=f"Regions ({len(regions)})")
        for col in ("id", "start", "end", "epoch", "peers (store:peer)", "leader store"):
            t.add_column(col)
        for region, lead in regions:
            peers = " ".join(
                f"{p.store_id}:{p.id}{'(learner)' if p.is_learner else ''}" for p in region.peers
            )
            t.add_row(
                str(region.id),
                codec.display_key(region.start_key),
                codec.display_key(region.end_key) if region.end_key else "+inf",
                f"{region.epoch.conf_ver}/{region.epoch.version}",
                peers,
                str(lead or "?"),
            )
        console.print(t)
        sp = pd.get_gc_safe_point()
        console.print(f"GC safe point: {sp}")
        for s in pd.get_all_stores():
            if any((lb.key, lb.value) == ("engine", "columnar") for lb in s.labels):
                _print_freshness(console, s.id, s.address, tls)
    finally:
        pd.close()
    return 1 if unhealthy else 0


__all__ = ["print_status"]
