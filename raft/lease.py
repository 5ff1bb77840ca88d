"""Leader leases: linearizable reads on the leader without a Raft round.

A read barrier (a replicated no-op) costs a full Raft round per read batch.
A lease lets a leader answer from its applied state at once, as long as no
other replica can have been elected since it last heard from a majority
(the Raft thesis, §6.4.1). Two halves make that true:

* **Voters are sticky** (thesis §4.2.3). A replica that has processed an
  append from the current leader refuses every ``request_vote`` for
  ``election_timeout_min`` afterwards; it also refuses them for that long
  after it starts (a restart forgets when it last heard from a leader). The
  exception is a vote asked for by a leadership transfer: the leader itself
  sent ``timeout_now``, and gave up its lease first (below).
* **The leader counts echoes of its own clock.** Every append the leader
  sends carries ``(term, its monotonic time)``; a voter echoes the newest
  stamp it has processed in what it sends back. A voter that echoes stamp
  ``s`` processed that append at or after ``s``, so it votes for no one
  before ``s + election_timeout_min``. With the stamps of a majority
  (itself included) at least ``s``, no other leader can exist before then:
  the lease runs until ``s + duration``, ``duration`` a safety margin below
  ``election_timeout_min`` (clock *rates* of two hosts differ a little; the
  clocks are never compared, the leader only compares its own).

A leader that steps down (a higher term arrives, or it hears from no
majority) fails the term check of :meth:`LeaderLease.valid` at once. A
leader that sends ``timeout_now`` gives up its lease for the rest of that
term (the candidate's transfer vote ignores stickiness, and may be delayed
arbitrarily). A pause (SIGSTOP, a GC pause) cannot make a lease read stale:
the read is decided when the lease is checked and answers the state applied
then, a state the Raft log held at that moment.

All mutation happens in the driver thread; readers in other threads read
the one ``(term, until)`` tuple, which is replaced whole.
"""

from __future__ import annotations

import math
from typing import Any

from pysyncobj.monotonic import monotonic as monotonic_time

STAMP = "lease_stamp"  # key added to append_entries: (term, leader time)
ECHO = "lease_echo"  # key added to a voter's messages to that leader
TRANSFER = "lease_transfer"  # key added to a request_vote that follows timeout_now
# The lease ends this fraction of the minimum election timeout after the
# majority's stamp: the rest absorbs clock-rate differences between hosts.
LEASE_FRACTION = 0.8


class LeaderLease:
    """The lease state of one replica (see the module docstring)."""

    def __init__(self, election_timeout_min: float, *, fresh: bool = False) -> None:
        self.stickiness = election_timeout_min
        self.duration = election_timeout_min * LEASE_FRACTION
        # Voter side: refuse votes for a while after start, as if the
        # replica had just heard from a leader (it may have, before a crash).
        # A replica created just now (by a split) has promised nothing.
        self.heard_at = -math.inf if fresh else monotonic_time()
        self._newest: tuple[str, tuple[int, float]] | None = None  # (leader, stamp)
        self._transfer_term: int | None = None
        # Leader side.
        self._acks: dict[str, tuple[int, float]] = {}
        self._revoked_term = -1
        self.lease: tuple[int, float] = (-1, 0.0)  # (term, until), replaced whole
        self.lease_reads = 0  # reads answered under the lease (for tests and metrics)

    # ------------------------------------------------------------ leader side
    def stamp(self, term: int) -> tuple[int, float]:
        return (term, monotonic_time())

    def on_echo(self, voter: str, echo: Any, term: int, voters: set[str]) -> None:
        """A voter echoed ``echo``; ``voters`` are the other voters now."""
        if not (isinstance(echo, tuple) and len(echo) == 2 and echo[0] == term):
            return
        prev = self._acks.get(voter)
        if prev is not None and prev[0] == term and prev[1] >= echo[1]:
            return
        self._acks[voter] = (term, float(echo[1]))
        self._recompute(term, voters)

    def _recompute(self, term: int, voters: set[str]) -> None:
        if term == self._revoked_term:
            self.lease = (term, 0.0)
            return
        # A majority of all voters (the others plus this one), this one
        # counting as "now": the (need-1)-th newest stamp of the others.
        need_others = (len(voters) + 1) // 2
        if need_others == 0:
            self.lease = (term, math.inf)
            return
        stamps = sorted(
            (s for v, (t, s) in self._acks.items() if t == term and v in voters), reverse=True
        )
        until = stamps[need_others - 1] + self.duration if len(stamps) >= need_others else 0.0
        self.lease = (term, until)

    def on_voters_changed(self, term: int, voters: set[str]) -> None:
        self._recompute(term, voters)

    def revoke(self, term: int) -> None:
        """Leader: a transfer started; no lease for the rest of ``term``."""
        self._revoked_term = term
        self.lease = (term, 0.0)

    def valid(self, term: int) -> bool:
        """The lease of ``term`` (the leader's current term) holds now."""
        lease_term, until = self.lease
        return lease_term == term and monotonic_time() < until

    # ------------------------------------------------------------ voter side
    def on_append(self, leader: str, message: dict[str, Any]) -> None:
        """An append from the current leader was processed."""
        self.heard_at = monotonic_time()
        stamp = message.get(STAMP)
        if isinstance(stamp, tuple):
            self._newest = (leader, stamp)

    def echo_for(self, addr: str) -> tuple[int, float] | None:
        newest = self._newest
        return newest[1] if newest is not None and newest[0] == addr else None

    def on_timeout_now(self, term: int) -> None:
        self._transfer_term = term

    def is_transfer_vote(self, vote_term: int) -> bool:
        """Our own request_vote of ``vote_term`` follows a timeout_now."""
        return self._transfer_term is not None and vote_term == self._transfer_term + 1

    def refuses_vote(self, message: dict[str, Any]) -> bool:
        if message.get(TRANSFER):
            return False
        return bool(monotonic_time() < self.heard_at + self.stickiness)
