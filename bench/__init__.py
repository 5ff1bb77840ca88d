"""The benchmark CLI: ``htapkv bench <workload>``.

Where it sits: the top of the stack; nothing imports it. Every workload
reports its numbers beside a baseline measured in the same run, so a result is
a ratio a reader can trust on any machine, never a bare figure.

Workloads now: ``storage`` (embedded transactions and raw operations vs plain
rocksdict) and ``raft`` (replicated writes on 3 stores vs an fsync'd local
write). Invariant: performance is measured here, never asserted in tests.
"""
