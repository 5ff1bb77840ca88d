"""Process wiring: what turns the store-side layers into something that serves.

Where it sits: the top of ``kvstore``; it may import every layer below.

* :mod:`kvstore.server.embedded` — a whole single-node store inside the
  caller's process (``kvstore.open(path)``).
* :mod:`kvstore.server.kv_service` — the Kv service over gRPC for any
  ``KvHandler`` (typed errors as response fields, malformed bytes answered
  with ``invalid_argument``, ``BatchCommands``); :mod:`~kvstore.server.pd_service`
  serves PD's ``Tso`` stream from any oracle.
* :mod:`kvstore.server.pd_server` — the placement driver process (every
  ``pdpb`` RPC, state replicated by Raft among 1 or 3 members);
  :mod:`~kvstore.server.local_pd` starts PD processes for tests.
* :mod:`kvstore.server.region_handler` — the Kv service over a replicated
  :class:`~kvstore.raftstore.Store` (route by Region, epoch and key range; read
  barrier before reads).
* :mod:`kvstore.server.store_server` — the replicated store process (Kv and
  Debug services, one Raft port); with ``--pd`` it is
  :mod:`~kvstore.server.store_node` (id, registration and bootstrap through
  PD) driven by :mod:`~kvstore.server.pd_worker` (heartbeats, operators, peer
  creation and removal, GC), with :mod:`~kvstore.server.metrics` on its
  status port. :mod:`~kvstore.server.local_cluster` starts static store
  clusters for tests, with kill, pause and network isolation;
  :mod:`~kvstore.server.launcher` starts a single embedded store process.
* :mod:`kvstore.server.columnar_node` — the columnar node: a store with
  learners of every Region feeding :class:`columnar.ColumnarStore`, and the
  ``Columnar`` service (learner reads at a ts, freshness).
* :mod:`kvstore.server.cluster` — :class:`~kvstore.server.cluster.LocalCluster`
  (PD, stores, columnar nodes as real processes; ``kvstore.LocalCluster``) and
  :mod:`~kvstore.server.commands` (``htapkv server ...``, ``htapkv cluster
  ...``), :mod:`~kvstore.server.status`, :mod:`~kvstore.server.certs`.

Invariant: nothing here decides data; it routes, decodes and encodes. Every
error a caller sees is a :class:`~kvstore.errors.KVError` or a transport status.
"""
