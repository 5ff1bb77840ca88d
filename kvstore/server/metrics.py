"""Prometheus metrics of a store process, served on its status port.

Read at scrape time from the live objects (a custom collector), so the hot
paths pay nothing for them: per store the Region and leader counts, per
Region the applied index and whether it is led here, and the PD worker's
counters (operators run, GC passes, versions removed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from kvstore.raftstore import Store
    from kvstore.server.pd_worker import PdWorker


class StoreCollector(Collector):
    def __init__(self, store: Store, worker: PdWorker | None = None) -> None:
        self.store = store
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sid = str(self.store.store_id)
        peers = list(self.store.peers.values())
        regions = GaugeMetricFamily(
            "htapkv_store_regions", "Region replicas hosted", labels=["store"]
        )
        regions.add_metric([sid], len(peers))
        leaders = GaugeMetricFamily("htapkv_store_leaders", "Regions led here", labels=["store"])
        leaders.add_metric([sid], sum(1 for p in peers if p.is_leader()))
        applied = GaugeMetricFamily(
            "htapkv_region_applied_index",
            "Raft log index applied by this replica",
            labels=["store", "region", "role"],
        )
        for p in peers:
            role = "leader" if p.is_leader() else ("learner" if p.meta.is_learner else "follower")
            applied.add_metric([sid, str(p.region_id), role], p.applied_index)
        yield regions
        yield leaders
        yield applied
        if self.worker is not None:
            for name, value in self.worker.stats.items():
                c = CounterMetricFamily(
                    f"htapkv_pd_worker_{name}", f"PD worker: {name}", labels=["store"]
                )
                c.add_metric([sid], value)
                yield c
            sp = GaugeMetricFamily(
                "htapkv_gc_safe_point", "GC safe point known here", labels=["store"]
            )
            sp.add_metric([sid], self.worker.gc_safe_point)
            yield sp


def serve_metrics(addr: str, *collectors: Collector) -> tuple[WSGIServer, str]:
    """Serve ``/metrics`` on ``addr`` (host:port, port 0 = any free one);
    return the server and the address it bound."""
    host, _, port = addr.rpartition(":")
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    server, _thread = start_http_server(int(port), host, registry=registry)
    return server, f"{host}:{server.server_port}"


__all__ = ["StoreCollector", "serve_metrics"]
