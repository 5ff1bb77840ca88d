"""The client library: the API applications use.

Where it sits: the top of the row store, and the only part of it that
applications (and the SQL layer) import. It never imports server-side modules:
it talks to a :class:`~kvstore.client.backend.KvBackend` and a
:class:`~kvstore.client.backend.TsoBackend`, which are served in process by an
embedded store (``kvstore.open``) or over gRPC by a cluster
(``kvstore.connect``, :mod:`kvstore.client.cluster`).

Key types: :class:`Client` (``raw``, ``begin``, ``transaction``, ``tso``,
``close``), :class:`Transaction`, :class:`RawClient`. Backends:
:mod:`kvstore.client.grpc_backend` (one store over gRPC, unary or
``BatchCommands``) and :mod:`kvstore.client.routing` (a Region cache routing
every call to the Region's leader, across splits and failovers). The
placement driver: :class:`~kvstore.client.pd_client.PdClient` (leader
finding, retries, batched timestamps over one ``Tso`` stream). Tables:
:mod:`kvstore.client.tables` (DDL/DML over the KV API, row-store scans);
analytic reads: :meth:`Client.columnar_scan` over
:mod:`kvstore.client.columnar` (learner reads on the columnar node, lock
resolution, row-store fallback).

Invariants: a transaction's writes become visible all at once at its commit_ts
or never; a conflicted transaction is never retried by replaying its writes
(only :meth:`Client.transaction` retries, by re-running the caller's function
at a new start_ts); locks left by crashed clients are resolved by whoever meets
them.
"""

from kvstore.client.client import Client
from kvstore.client.raw import RawClient
from kvstore.client.txn import Transaction

__all__ = ["Client", "RawClient", "Transaction"]
