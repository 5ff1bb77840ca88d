"""The benchmark CLI: ``htapkv bench <workload>``.

Where it sits: the top of the stack; nothing imports it. Every workload
reports its numbers beside a baseline measured in the same run, so a result is
a ratio a reader can trust on any machine, never a bare figure.

Workloads now: ``storage`` (embedded transactions and raw operations vs plain
rocksdict), ``raft`` (replicated writes on 3 stores vs an fsync'd local
write) and ``ycsb`` (YCSB workloads a/b/c/e/f on htapkv, beside a 3-member
etcd with ``--peer etcd``; ``--suite targets`` for the etcd targets).
Invariant: performance is measured here, never asserted in tests.
"""
