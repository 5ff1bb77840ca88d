"""The Raft log, kept in the caller's storage and fsync'd in batches.

:class:`RaftLogStore` is shared by all groups of a process. Each group has a
:class:`RocksJournal`, the object pysyncobj calls ``journal``: it keeps the
log in memory (pysyncobj indexes it like a list) and queues every change; the
driver calls :meth:`RaftLogStore.flush` once per loop, writing the changes of
every group in one synced batch.

Layout under the group's prefix ``raftlog/<group id, 8 bytes>/``:

* ``e<index, 8 bytes>`` -> ``term (8 bytes) + command``
* ``s`` -> ``term, voted_for, commit_index`` (hard state)

Term and vote are written *and synced* immediately (Raft requires them
durable before a vote is sent); the commit index rides on the next flush.

A failed write or sync is final: :attr:`RaftLogStore.failed` is set and every
later flush raises :class:`LogFlushError`, even if the disk seems to recover.
After a failed fsync the kernel may have dropped the dirty pages (so a retry
that succeeds proves nothing), and the entries of the failed batch are no
longer queued: returning from a later flush would let the driver acknowledge
them. Only a restart, which re-reads what is really on disk, recovers.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from pysyncobj.journal import Journal

_U64 = struct.Struct(">Q")
_STATE = struct.Struct(">QQ")  # term, commit index; voted_for follows as text


class LogStorage(Protocol):
    """What the Raft log needs from the store's engine."""

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def apply(
        self,
        puts: list[tuple[bytes, bytes]],
        deletes: list[tuple[bytes, bytes]],
        *,
        sync: bool,
    ) -> None:
        """Atomically put ``puts`` and delete each ``[start, end)`` range."""
        ...


class LogFlushError(Exception):
    """The Raft log could not be made durable: this process must stop
    acknowledging anything (see the module docstring)."""


def group_prefix(group_id: int) -> bytes:
    return b"raftlog/" + _U64.pack(group_id) + b"/"


class RaftLogStore:
    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._puts: list[tuple[bytes, bytes]] = []
        self._deletes: list[tuple[bytes, bytes]] = []
        self.flushes = 0
        self.failed: BaseException | None = None  # the first failed write: final

    def journal(self, group_id: int) -> RocksJournal:
        return RocksJournal(self, group_id)

    def queue(self, puts: list[tuple[bytes, bytes]], deletes: list[tuple[bytes, bytes]]) -> None:
        with self._lock:
            # A storage batch applies its deletes before its puts. A delete
            # queued after puts (e.g. truncating a conflicting log tail just
            # appended) must not run before them: write the puts out first.
            if deletes and self._puts:
                self._flush_locked(sync=False)
            self._deletes.extend(deletes)
            self._puts.extend(puts)

    def write_now(self, puts: list[tuple[bytes, bytes]]) -> None:
        """Write (and sync) at once, together with everything queued."""
        with self._lock:
            self._puts.extend(puts)
            self._flush_locked(sync=True)

    def flush(self) -> bool:
        """Make everything queued durable. Returns whether anything was."""
        with self._lock:
            if self.failed is None and not self._puts and not self._deletes:
                return False
            self._flush_locked(sync=True)
            return True

    def _flush_locked(self, *, sync: bool) -> None:
        if self.failed is not None:
            raise LogFlushError(f"the Raft log failed to persist earlier: {self.failed}")
        puts, deletes = self._puts, self._deletes
        self._puts, self._deletes = [], []
        try:
            self.storage.apply(puts, deletes, sync=sync)
        except Exception as e:
            self.failed = e
            raise LogFlushError(f"the Raft log failed to persist: {e}") from e
        if sync:
            self.flushes += 1

    def drop_group(self, group_id: int) -> None:
        p = group_prefix(group_id)
        self.queue([], [(p, p + b"\xff")])
        self.flush()


class RocksJournal(Journal):  # type: ignore[misc]
    """pysyncobj ``Journal`` backed by :class:`RaftLogStore`."""

    def __init__(self, store: RaftLogStore, group_id: int) -> None:
        self._store = store
        self._prefix = group_prefix(group_id)
        self._entries: list[tuple[bytes, int, int]] = []
        self._term = 0
        self._voted_for: str | None = None
        self._commit_index = 1
        self._state_dirty = False
        # Entries set aside by clear(): their tail is kept if pysyncobj then
        # re-adds an entry they already hold (see clear()).
        self._shadow: list[tuple[bytes, int, int]] | None = None
        for k, v in store.storage.scan_prefix(self._prefix):
            tail = k[len(self._prefix) :]
            if tail[:1] == b"e":
                idx = _U64.unpack(tail[1:9])[0]
                term = _U64.unpack(v[:8])[0]
                self._entries.append((v[8:], idx, term))
            elif tail == b"s":
                self._term, self._commit_index = _STATE.unpack(v[: _STATE.size])
                voted = v[_STATE.size :]
                self._voted_for = voted.decode() if voted else None

    # ---- keys
    def _ekey(self, idx: int) -> bytes:
        return self._prefix + b"e" + _U64.pack(idx)

    def _state(self) -> tuple[bytes, bytes]:
        voted = (self._voted_for or "").encode()
        return self._prefix + b"s", _STATE.pack(self._term, self._commit_index) + voted

    # ---- pysyncobj Journal API
    def add(self, command: bytes, idx: int, term: int) -> None:
        if self._shadow is not None:
            shadow, self._shadow = self._shadow, None
            pos = idx - shadow[0][1] if shadow else -1
            if 0 <= pos < len(shadow) and shadow[pos][2] == term:
                # Raft §7: our log holds the snapshot's entry at the same index
                # and term, so everything after it is valid: keep it.
                self._entries = shadow[pos:]
                self._store.queue([], [(self._ekey(0), self._ekey(idx))])
                return
            self._store.queue([], [(self._prefix + b"e", self._prefix + b"f")])
        if self._entries and idx <= self._entries[-1][1]:
            pos = idx - self._entries[0][1]
            if pos >= 0 and self._entries[pos][2] == term:
                return  # already held (a kept tail)
            self.deleteEntriesFrom(max(pos, 0))
        self._entries.append((command, idx, term))
        self._store.queue([(self._ekey(idx), _U64.pack(term) + bytes(command))], [])

    def clear(self) -> None:
        """pysyncobj clears the log before loading a snapshot and re-adds the
        snapshot's last two entries. Dropping the tail there is what lost
        acknowledged writes when a crash fell between replacing the snapshot
        file and truncating the log: so the clear only takes effect if the
        next entry added does not match one we hold (see :meth:`add`)."""
        if self._shadow is None:
            self._shadow = self._entries
        self._entries = []

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        first = self._entries[entryFrom][1]
        del self._entries[entryFrom:]
        self._store.queue([], [(self._ekey(first), self._prefix + b"f")])

    def deleteEntriesTo(self, entryTo: int) -> None:
        if entryTo <= 0:
            return
        last = self._entries[min(entryTo, len(self._entries)) - 1][1]
        del self._entries[:entryTo]
        self._store.queue([], [(self._ekey(0), self._ekey(last + 1))])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def first_index(self) -> int | None:
        return self._entries[0][1] if self._entries else None

    def _destroy(self) -> None:
        pass

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Not queued: a stale commit index only means re-learning it from the
        # leader after a restart. It is saved with the next term change and
        # once a second, never costing a flush of its own.
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._state_dirty = True

    def onOneSecondTimer(self) -> None:
        if self._state_dirty:
            self._state_dirty = False
            self._store.queue([self._state()], [])

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self._term = term
        self._voted_for = None if votedForNodeId is None else str(votedForNodeId)
        # Durable before the vote (or the new term) is announced.
        self._store.write_now([self._state()])

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    # ---- ours
    def term_at(self, idx: int) -> int | None:
        if not self._entries:
            return None
        pos = idx - self._entries[0][1]
        if 0 <= pos < len(self._entries):
            return self._entries[pos][2]
        return None
