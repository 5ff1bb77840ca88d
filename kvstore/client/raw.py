"""The raw (non-transactional) half of the client API."""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.client.backend import KvBackend
from kvstore.errors import InvalidArgumentError
from kvstore.types import validate_key, validate_value


class RawClient:
    """``client.raw``: single-key linearizable operations, no transactions.

    Keys and values are validated here too, so a bad call fails before
    anything is sent (the store validates again: it trusts no client).
    """

    def __init__(self, backend: KvBackend) -> None:
        self._b = backend

    def get(self, key: bytes) -> bytes | None:
        return self._b.raw_get(validate_key(key))

    def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        ks = [validate_key(k) for k in keys]
        return self._b.raw_batch_get(ks) if ks else {}

    def put(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
        self._b.raw_put(validate_key(key), validate_value(value), ttl)

    def batch_put(self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None) -> None:
        checked: list[tuple[bytes, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError("batch_put takes (key, value) pairs")
            checked.append((validate_key(pair[0]), validate_value(pair[1])))
        if checked:
            self._b.raw_batch_put(checked, ttl)

    def delete(self, key: bytes) -> None:
        self._b.raw_delete(validate_key(key))

    def scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return self._b.raw_scan(start, end, limit)

    def delete_range(self, start: bytes, end: bytes | None) -> None:
        self._b.raw_delete_range(start, end)

    def compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, ttl: int | None = None
    ) -> tuple[bool, bytes | None]:
        """Set ``key`` to ``new`` iff it currently holds ``expected`` (``None``:
        absent). Returns ``(swapped, previous_value)``."""
        validate_key(key)
        validate_value(new)
        if expected is not None:
            validate_value(expected)
        return self._b.raw_compare_and_swap(key, expected, new, ttl)
