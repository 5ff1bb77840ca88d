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
  Debug services, one Raft port); :mod:`~kvstore.server.local_cluster` starts
  several for tests, with kill, pause and network isolation;
  :mod:`~kvstore.server.launcher` starts a single embedded store process.

Invariant: nothing here decides data; it routes, decodes and encodes. Every
error a caller sees is a :class:`~kvstore.errors.KVError` or a transport status.
"""
