"""``kvstore.connect``: the client of a PD-managed cluster.

The same :class:`~kvstore.client.Client` as the embedded ``kvstore.open``,
over a :class:`~kvstore.client.routing.RoutedKvBackend` that learns Regions
from PD (:class:`PdRegionSource`) and a :class:`~kvstore.client.pd_client.PdClient`
for timestamps (batched over PD's Tso stream).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from typing import Any

from kvstore.client.client import Client
from kvstore.client.pd_client import PdClient
from kvstore.client.routing import RegionLocation, RoutedKvBackend
from kvstore.errors import InvalidArgumentError
from kvstore.proto.tls import tls_from_args

# Regions fetched per PD round trip when the cache misses: neighbours are
# usually next (scans, batches), and one ScanRegions costs what one GetRegion does.
PREFETCH_REGIONS = 16


class PdRegionSource:
    """:class:`~kvstore.client.routing.RegionSource` backed by PD's Region
    directory and store registry."""

    def __init__(self, pd: PdClient) -> None:
        self.pd = pd
        self._mu = threading.Lock()
        self._addrs: dict[int, str] = {}

    def locate(self, encoded_key: bytes) -> list[RegionLocation]:
        found = self.pd.get_region(encoded_key)
        if found is None:
            return []
        region, leader = found
        out = [RegionLocation(region, leader or 0)]
        if region.end_key:
            for r, lead in self.pd.scan_regions(region.end_key, b"", PREFETCH_REGIONS):
                out.append(RegionLocation(r, lead or 0))
        return out

    def store_addr(self, store_id: int) -> str | None:
        with self._mu:
            addr = self._addrs.get(store_id)
        if addr is not None:
            return addr
        store = self.pd.get_store(store_id)
        if store is None or not store.address:
            return None
        with self._mu:
            self._addrs[store_id] = store.address
        return str(store.address)

    def forget_store(self, store_id: int) -> None:
        with self._mu:
            self._addrs.pop(store_id, None)

    def close(self) -> None:
        pass  # the PD client is closed by whoever owns it


def connect(
    pd_addrs: str | Sequence[str],
    *,
    batching: bool = True,
    timeout: float = 20.0,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    raw_retry_unknown: bool = True,
    **client_options: Any,
) -> Client:
    """A client of the cluster whose PD answers at ``pd_addrs`` (one
    ``host:port``, a comma-separated list, or a list). Same API as
    ``kvstore.open``: ``raw``, ``begin``, ``transaction``, ``tso``, ``close``.
    ``timeout``: total time per call, retries included. ``tls_*``: PEM files
    (CA, this client's certificate and key) when the cluster requires mutual
    TLS. ``raw_retry_unknown=False``: a raw write whose outcome is unknown
    raises ``UndeterminedError`` instead of being sent again (linearizable;
    see :mod:`kvstore.client.routing`)."""
    tls = tls_from_args(argparse.Namespace(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key))
    if isinstance(pd_addrs, str):
        pd_addrs = [a for a in (s.strip() for s in pd_addrs.split(",")) if a]
    addrs = list(pd_addrs)
    if not addrs:
        raise InvalidArgumentError("at least one PD address is needed")
    pd = PdClient(addrs, tls=tls)
    try:
        kv = RoutedKvBackend(
            source=PdRegionSource(pd),
            batching=batching,
            timeout=timeout,
            tls=tls,
            raw_retry_unknown=raw_retry_unknown,
        )
    except BaseException:
        pd.close()
        raise

    def close() -> None:
        kv.close()
        pd.close()

    client = Client(kv, pd, on_close=close, **client_options)
    from kvstore.client.columnar import ColumnarReader

    client.columnar = ColumnarReader(client, pd, tls)
    return client


__all__ = ["PdRegionSource", "connect"]
