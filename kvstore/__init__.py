"""htapkv's row store: a TiKV-style transactional key-value store.

Where it sits: the foundation of htapkv. ``sql`` and ``bench`` sit on top and
reach data only through :mod:`kvstore.client`; ``columnar`` will follow the
row store's Regions as a learner.

Layers, bottom up (each imports only those below it; enforced by
``tests/test_architecture.py``):

* :mod:`kvstore.errors`, :mod:`kvstore.codec`, :mod:`kvstore.types` — error
  tree, memcomparable keys, Lock/Write records;
* :mod:`kvstore.storage` — RocksDB (rocksdict) and in-memory engines;
* :mod:`kvstore.mvcc` — versions in the ``default``/``lock``/``write`` CFs;
* :mod:`kvstore.txn` — Percolator actions, latches, the command scheduler;
  :mod:`kvstore.rawkv` — raw commands; :mod:`kvstore.pd` — timestamp oracle;
* :mod:`kvstore.client` — the API: transactions, lock resolution, raw KV;
* :mod:`kvstore.server` — process wiring: the embedded store, the store and
  PD servers, :class:`LocalCluster`.

Public API::

    import kvstore
    with kvstore.open("/tmp/db") as client:
        client.raw.put(b"k", b"v")
        with client.begin() as txn:
            txn.put(b"a", b"1")
        client.transaction(lambda txn: txn.get(b"a"))

    with kvstore.LocalCluster("/tmp/cluster") as cluster:   # PD + 3 stores
        with kvstore.connect(cluster.pd_addr) as client:     # same API
            client.raw.put(b"k", b"v")

Guarantees: snapshot isolation for transactions (write skew is allowed, as in
TiKV), linearizable single-key raw operations, atomic write batches.
"""

from __future__ import annotations

import os
from typing import Any

from kvstore.client import Client, RawClient, Transaction
from kvstore.errors import *  # noqa: F403  (the error tree is part of the API)
from kvstore.errors import KVError


def open(path: str | os.PathLike[str] | None, **options: Any) -> Client:
    """Open an embedded single-process store in ``path`` (created if missing,
    reopened with its data if present). Options: ``durable`` (default True),
    ``lock_ttl_ms``, ``lock_wait_timeout``."""
    from kvstore.server.embedded import open_store

    return open_store(path, **options)


def connect(pd_addrs: str | list[str], **options: Any) -> Client:
    """Connect to a cluster through its PD node(s) (``host:port``, comma-
    separated or a list). The returned client has the API of :func:`open`."""
    from kvstore.client.cluster import connect as _connect

    return _connect(pd_addrs, **options)


def __getattr__(name: str) -> Any:
    # Imported on first use: most users of kvstore never start processes.
    if name == "LocalCluster":
        from kvstore.server.cluster import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'kvstore' has no attribute {name!r}")


__all__ = [  # noqa: F405 (LocalCluster comes from __getattr__)
    "Client",
    "KVError",
    "LocalCluster",
    "RawClient",
    "Transaction",
    "connect",
    "open",
]
