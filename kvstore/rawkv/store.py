"""Raw commands over an engine (see the package docstring)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Sequence

from kvstore import codec
from kvstore.errors import InvalidArgumentError
from kvstore.storage import CF_DEFAULT, Reader, WriteBatch
from kvstore.txn.latches import Latches
from kvstore.txn.scheduler import WriteSink
from kvstore.types import validate_key, validate_limit, validate_range, validate_value

_NO_TTL = b"\x00"
_TTL = 1
_EXPIRY = struct.Struct(">Q")
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def _check_ttl(ttl: object) -> int | None:
    if ttl is None:
        return None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidArgumentError("ttl must be a positive number of seconds (or None)")
    return ttl


class RawStore:
    def __init__(
        self,
        reader: Reader,
        sink: WriteSink,
        *,
        durable: bool = True,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        latches: Latches | None = None,
        bounds: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._reader = reader
        self._sink = sink
        self._durable = durable
        self._clock_ms = clock_ms
        self.latches = latches or Latches()
        self._bounds = bounds

    def _range(self, start: bytes, end: bytes | None) -> tuple[bytes, bytes]:
        lo, hi = codec.raw_range(start, end)
        if self._bounds is not None:
            b_lo, b_hi = self._bounds()
            lo = max(lo, b_lo)
            if b_hi:
                hi = min(hi, b_hi)
        return lo, hi

    # ------------------------------------------------------------ encoding
    def _encode_value(self, value: bytes, ttl: int | None) -> bytes:
        if ttl is None:
            return _NO_TTL + value
        return bytes((_TTL,)) + _EXPIRY.pack(self._clock_ms() + ttl * 1000) + value

    def _decode_value(self, stored: bytes | None, now_ms: int) -> bytes | None:
        if stored is None:
            return None
        if stored[0] == _TTL:
            if _EXPIRY.unpack_from(stored, 1)[0] <= now_ms:
                return None
            return stored[1 + _EXPIRY.size :]
        return stored[1:]

    def _write(self, batch: WriteBatch) -> None:
        self._sink.write(batch, sync=self._durable)

    # ------------------------------------------------------------ reads
    def raw_get(self, key: bytes) -> bytes | None:
        validate_key(key)
        return self._decode_value(
            self._reader.get(CF_DEFAULT, codec.raw_key(key)), self._clock_ms()
        )

    def raw_batch_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        for k in keys:
            validate_key(k)
        now = self._clock_ms()
        out = {}
        for k in keys:
            v = self._decode_value(self._reader.get(CF_DEFAULT, codec.raw_key(k)), now)
            if v is not None:
                out[k] = v
        return out

    def raw_scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        lo, hi = self._range(start, end)
        now = self._clock_ms()
        out: list[tuple[bytes, bytes]] = []
        if limit == 0:
            return out
        for k, stored in self._reader.scan(CF_DEFAULT, lo, hi):
            v = self._decode_value(stored, now)
            if v is None:
                continue
            out.append((codec.decode_raw_key(k), v))
            if limit is not None and len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------ writes
    def raw_put(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
        self.raw_batch_put([(key, value)], ttl)

    def raw_batch_put(self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None) -> None:
        keys, batch = self.put_batch(pairs, ttl)
        if not keys:
            return
        with self.latches.acquire(keys):
            self._write(batch)

    def raw_batch_put_async(
        self,
        pairs: Iterable[tuple[bytes, bytes]],
        ttl: int | None,
        done: Callable[[Exception | None], None],
    ) -> bool:
        """:meth:`raw_batch_put` without waiting, when the sink can write
        asynchronously and the keys' latches are free right now: ``done``
        gets the outcome (None, or the error :meth:`raw_batch_put` would
        raise), in the sink's thread. Returns False, having done nothing,
        when the caller should use :meth:`raw_batch_put` instead; raises what
        it raises for bad input.

        The latches are released when the sink says the write's fate is
        known, not at ``done``: an answer at the proposal's deadline
        ("unknown") comes while the entry may still apply, and a
        compare-and-swap on these keys must not read the value before it
        and write after it."""
        write_async = getattr(self._sink, "write_async", None)
        if write_async is None:
            return False
        keys, batch = self.put_batch(pairs, ttl)
        if not keys:
            done(None)
            return True
        held = self.latches.acquire(keys)
        if not held.try_take():
            return False
        released = False

        def settled() -> None:
            nonlocal released
            released = True
            held.release()

        try:
            write_async(batch, done, settled)
        except BaseException:
            if not released:  # else the latches may be someone else's by now
                held.release()
            raise
        return True

    def put_batch(
        self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None
    ) -> tuple[list[bytes], WriteBatch]:
        """The encoded keys and the write batch of a batch put, validated but
        not written (for a caller that writes it another way)."""
        ttl = _check_ttl(ttl)
        batch = WriteBatch()
        keys = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError("batch_put takes (key, value) pairs")
            k, v = pair
            validate_key(k)
            validate_value(v)
            ek = codec.raw_key(k)
            keys.append(ek)
            batch.put(CF_DEFAULT, ek, self._encode_value(v, ttl))
        return keys, batch

    def raw_delete(self, key: bytes) -> None:
        validate_key(key)
        ek = codec.raw_key(key)
        batch = WriteBatch()
        batch.delete(CF_DEFAULT, ek)
        with self.latches.acquire([ek]):
            self._write(batch)

    def raw_delete_range(self, start: bytes, end: bytes | None) -> None:
        start, end = validate_range(start, end)
        if end is not None and end <= start:
            raise InvalidArgumentError("delete_range needs start < end")
        lo, hi = self._range(start, end)
        batch = WriteBatch()
        batch.delete_range(CF_DEFAULT, lo, hi)
        # All latches: a compare_and_swap inside the range must not write back
        # a value this delete has just removed.
        with self.latches.acquire_all():
            self._write(batch)

    def raw_compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, ttl: int | None = None
    ) -> tuple[bool, bytes | None]:
        """Set ``key`` to ``new`` iff its current value is ``expected``
        (``None``: absent). Returns ``(swapped, previous_value)``."""
        validate_key(key)
        validate_value(new)
        if expected is not None:
            validate_value(expected)
        ttl = _check_ttl(ttl)
        ek = codec.raw_key(key)
        with self.latches.acquire([ek]):
            prev = self._decode_value(self._reader.get(CF_DEFAULT, ek), self._clock_ms())
            if prev != expected:
                return False, prev
            batch = WriteBatch()
            batch.put(CF_DEFAULT, ek, self._encode_value(new, ttl))
            self._write(batch)
        return True, prev
