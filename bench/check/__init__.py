"""Jepsen-style consistency checks: ``htapkv check``.

What it is: workloads run against a real cluster from several client
processes while a *nemesis* kills, pauses, partitions, skews the clock of,
fails the fsyncs of or cuts the power of nodes (leaders among them); every
operation is recorded (:mod:`bench.check.history`) and the history is then
judged by a checker for the guarantee the workload exercises:

* :mod:`~bench.check.bank`: transfers conserve money (snapshot reads);
* :mod:`~bench.check.register`: raw KV is linearizable per key
  (a Wing-Gong / Porcupine-style search);
* :mod:`~bench.check.sets`: acknowledged inserts are never lost;
* :mod:`~bench.check.append`: list-append transactions, Elle-style cycle
  detection (G0, G1a/b/c, G-single forbidden under snapshot isolation; G2
  allowed and reported as such);
* :mod:`~bench.check.columnar_eq`: a columnar read and a row-store read at the
  same timestamp are equal.

Where it sits: in ``bench``, the top layer; it reaches the database only
through ``kvstore``'s public client and ``kvstore.LocalCluster``.
:mod:`~bench.check.workloads` (client side), :mod:`~bench.check.nemesis`,
:mod:`~bench.check.runner` and :mod:`~bench.check.cli` do the I/O.

Invariants:

* Checkers are pure functions of a history: no I/O, no clock, no randomness;
  each returns a :class:`~bench.check.history.CheckResult`.
* An operation whose outcome is unknown (timeout, lost connection at commit)
  is recorded as ``info``, never as ``fail``; checkers let it take effect or
  not, whichever explains the history.
* A run always heals and restarts every node before its final reads, so the
  final reads see the whole surviving state.
"""
