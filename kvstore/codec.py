"""Key encodings: memcomparable bytes, descending timestamps, key spaces.

Everything stored in the data column families is ordered by RocksDB's plain
bytewise comparator, so the encodings here are what make that order mean
something:

* :func:`encode_bytes` is TiKV's ``EncodeBytes`` (memcomparable): the key is cut
  into groups of 8 bytes, the last one padded with ``0x00``, each followed by a
  marker ``0xFF - padding``. Encoded keys compare exactly like the raw keys,
  and no encoded key is a prefix of another, so a suffix can be appended
  without breaking the order.
* A version suffix is ``~ts`` as 8 big-endian bytes, so for one user key the
  newest version sorts first and "the newest version <= ts" is one seek.
* Key spaces (TiKV API v2 style): transactional keys live under ``b"x"`` and
  raw keys under ``b"r"``, so the two APIs share one engine (and later one set of
  Regions) without seeing each other's data.

Invariants (property-tested in ``tests/test_codec.py``):
``a < b  <=>  encode_bytes(a) < encode_bytes(b)``; ``decode(encode(k)) == k``;
for one key, ``append_ts(k, t1) < append_ts(k, t2)  <=>  t1 > t2``.

Pure module: no I/O, no clock.
"""

from __future__ import annotations

import struct

from kvstore.errors import InvalidArgumentError

ENC_GROUP_SIZE = 8
ENC_MARKER = 0xFF
ENC_PAD = b"\x00" * ENC_GROUP_SIZE
U64_MAX = (1 << 64) - 1

TXN_KEYSPACE = b"x"
RAW_KEYSPACE = b"r"

_U64 = struct.Struct(">Q")


def encode_bytes(key: bytes) -> bytes:
    """Memcomparable encoding of ``key`` (TiKV ``EncodeBytes``)."""
    n = len(key)
    parts: list[bytes] = []
    # Always emit len(key)//8 + 1 groups: a key whose length is a multiple of 8
    # gets a final all-padding group, so "ab" and "ab\0" stay distinct.
    for i in range(0, n - n % ENC_GROUP_SIZE, ENC_GROUP_SIZE):
        parts.append(key[i : i + ENC_GROUP_SIZE])
        parts.append(b"\xff")
    tail = key[n - n % ENC_GROUP_SIZE :]
    pad = ENC_GROUP_SIZE - len(tail)
    parts.append(tail)
    parts.append(ENC_PAD[:pad])
    parts.append(bytes((ENC_MARKER - pad,)))
    return b"".join(parts)


def decode_bytes(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    """Decode one memcomparable key starting at ``offset``.

    Returns the key and the offset just past it. Raises
    :class:`InvalidArgumentError` on malformed input (truncated group, bad marker,
    non-zero padding), so corrupted or hostile bytes never decode silently.
    """
    out: list[bytes] = []
    pos = offset
    while True:
        group = data[pos : pos + ENC_GROUP_SIZE + 1]
        if len(group) != ENC_GROUP_SIZE + 1:
            raise InvalidArgumentError("memcomparable key is truncated")
        marker = group[ENC_GROUP_SIZE]
        pad = ENC_MARKER - marker
        if pad > ENC_GROUP_SIZE:
            raise InvalidArgumentError(f"memcomparable key has a bad marker {marker:#x}")
        pos += ENC_GROUP_SIZE + 1
        if pad == 0:
            out.append(group[:ENC_GROUP_SIZE])
            continue
        real = ENC_GROUP_SIZE - pad
        if group[real:ENC_GROUP_SIZE] != ENC_PAD[:pad]:
            raise InvalidArgumentError("memcomparable key has non-zero padding")
        out.append(group[:real])
        return b"".join(out), pos


def encode_u64_desc(v: int) -> bytes:
    """8 bytes that sort in *descending* order of ``v``."""
    return _U64.pack(U64_MAX - v)


def decode_u64_desc(b: bytes) -> int:
    if len(b) != 8:
        raise InvalidArgumentError("descending u64 must be 8 bytes")
    return U64_MAX - int(_U64.unpack(b)[0])


def append_ts(encoded_key: bytes, ts: int) -> bytes:
    """Versioned key: ``encoded_key`` followed by ``~ts`` (newest first)."""
    return encoded_key + _U64.pack(U64_MAX - ts)


def split_ts(versioned_key: bytes) -> tuple[bytes, int]:
    """Inverse of :func:`append_ts`: ``(encoded_key, ts)``."""
    if len(versioned_key) < 8:
        raise InvalidArgumentError("versioned key is shorter than its timestamp")
    return versioned_key[:-8], U64_MAX - int(_U64.unpack(versioned_key[-8:])[0])


def txn_key(user_key: bytes) -> bytes:
    """Encoded key of a transactional user key (no version suffix)."""
    return encode_bytes(TXN_KEYSPACE + user_key)


def raw_key(user_key: bytes) -> bytes:
    """Encoded key of a raw user key."""
    return encode_bytes(RAW_KEYSPACE + user_key)


def txn_range(start: bytes, end: bytes | None) -> tuple[bytes, bytes]:
    """Encoded ``[start, end)`` of transactional user keys; ``end=None`` or
    ``b""`` means the end of the transactional key space."""
    lo = txn_key(start)
    hi = txn_key(end) if end else encode_bytes(bytes((TXN_KEYSPACE[0] + 1,)))
    return lo, hi


def raw_range(start: bytes, end: bytes | None) -> tuple[bytes, bytes]:
    lo = raw_key(start)
    hi = raw_key(end) if end else encode_bytes(bytes((RAW_KEYSPACE[0] + 1,)))
    return lo, hi


def decode_txn_key(encoded: bytes) -> bytes:
    """User key of an encoded transactional key (without version)."""
    key, pos = decode_bytes(encoded)
    if pos != len(encoded) or not key.startswith(TXN_KEYSPACE):
        raise InvalidArgumentError("not a transactional key")
    return key[1:]


def decode_raw_key(encoded: bytes) -> bytes:
    key, pos = decode_bytes(encoded)
    if pos != len(encoded) or not key.startswith(RAW_KEYSPACE):
        raise InvalidArgumentError("not a raw key")
    return key[1:]


def display_key(encoded: bytes, width: int = 24) -> str:
    """A Region boundary for people: ``raw:user/00750``, ``txn:acct/bob``,
    or hex when it is not a whole encoded key; ``""`` is shown as ``-inf``
    (use it for start keys; an empty end key means +inf)."""
    if not encoded:
        return "-inf"
    try:
        key, pos = decode_bytes(encoded)
    except InvalidArgumentError:
        key, pos = b"", -1
    if pos == len(encoded) and key[:1] in (TXN_KEYSPACE, RAW_KEYSPACE):
        space = "txn" if key[:1] == TXN_KEYSPACE else "raw"
        text = f"{space}:{key[1:].decode('utf-8', 'backslashreplace')}"
    else:
        text = "0x" + encoded.hex()
    return text if len(text) <= width else text[: width - 1] + "…"
