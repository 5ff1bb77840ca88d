"""Property tests of the key encodings (kvstore.codec) and records (kvstore.types).

The row store's correctness rests on RocksDB's bytewise order meaning the right
thing: memcomparable keys must sort like the user keys, versions of one key must
sort newest first and stay together, and the transactional and raw key spaces
must never mix. Decoders must refuse malformed bytes instead of guessing.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kvstore import codec
from kvstore.codec import (
    ENC_GROUP_SIZE,
    U64_MAX,
    append_ts,
    decode_bytes,
    decode_raw_key,
    decode_txn_key,
    decode_u64_desc,
    encode_bytes,
    encode_u64_desc,
    raw_key,
    raw_range,
    split_ts,
    txn_key,
    txn_range,
)
from kvstore.errors import InvalidArgumentError
from kvstore.types import Lock, LockType, Write, WriteType

# Keys from a small alphabet collide, share prefixes and hit the 0x00 padding
# byte and 0xff marker byte often; plain binary() covers everything else.
_small_keys = st.binary(max_size=20).map(lambda b: bytes((0x00, 0x01, 0xFF)[x % 3] for x in b))
keys = st.one_of(st.binary(max_size=40), _small_keys)
timestamps = st.integers(min_value=0, max_value=U64_MAX)
u64 = st.integers(min_value=0, max_value=U64_MAX)

GROUP = ENC_GROUP_SIZE + 1  # 8 data bytes + marker


# --------------------------------------------------------------------------
# memcomparable bytes
# --------------------------------------------------------------------------


@given(keys, keys)
def test_encode_bytes_preserves_order(a: bytes, b: bytes) -> None:
    ea, eb = encode_bytes(a), encode_bytes(b)
    assert (a < b) == (ea < eb)
    assert (a == b) == (ea == eb)


@given(st.lists(keys, max_size=30))
def test_sorting_encoded_keys_sorts_user_keys(ks: list[bytes]) -> None:
    assert [decode_bytes(e)[0] for e in sorted(map(encode_bytes, ks))] == sorted(ks)


@given(keys)
def test_encode_bytes_round_trips(k: bytes) -> None:
    enc = encode_bytes(k)
    assert len(enc) == (len(k) // ENC_GROUP_SIZE + 1) * GROUP
    assert decode_bytes(enc) == (k, len(enc))


@given(st.binary(max_size=20), keys, st.binary(max_size=20))
def test_decode_bytes_at_offset_stops_after_the_key(prefix: bytes, k: bytes, suffix: bytes) -> None:
    enc = encode_bytes(k)
    assert decode_bytes(prefix + enc + suffix, len(prefix)) == (k, len(prefix) + len(enc))


@given(keys, keys)
def test_encoded_keys_are_prefix_free(a: bytes, b: bytes) -> None:
    assume(a != b)
    ea, eb = encode_bytes(a), encode_bytes(b)
    assert not eb.startswith(ea)
    assert not ea.startswith(eb)


def test_encode_bytes_known_vectors() -> None:
    # TiKV EncodeBytes test vectors.
    assert encode_bytes(b"") == b"\x00" * 8 + b"\xf7"
    assert encode_bytes(b"\x01\x02\x03") == b"\x01\x02\x03" + b"\x00" * 5 + b"\xfa"
    assert encode_bytes(b"12345678") == b"12345678\xff" + b"\x00" * 8 + b"\xf7"
    assert encode_bytes(b"ab") < encode_bytes(b"ab\x00") < encode_bytes(b"ab\x00\x00")


# --------------------------------------------------------------------------
# decode_bytes rejects malformed input
# --------------------------------------------------------------------------


@given(keys, st.data())
def test_decode_bytes_rejects_every_truncation(k: bytes, data: st.DataObject) -> None:
    enc = encode_bytes(k)
    cut = data.draw(st.integers(min_value=0, max_value=len(enc) - 1), label="cut")
    with pytest.raises(InvalidArgumentError):
        decode_bytes(enc[:cut])


@given(keys, st.data())
def test_decode_bytes_rejects_bad_marker(k: bytes, data: st.DataObject) -> None:
    enc = bytearray(encode_bytes(k))
    group = data.draw(st.integers(min_value=0, max_value=len(enc) // GROUP - 1), label="group")
    # A marker means 0xff - padding with padding <= 8: anything below 0xf7 is bad.
    enc[group * GROUP + ENC_GROUP_SIZE] = data.draw(st.integers(0, 0xF6), label="marker")
    with pytest.raises(InvalidArgumentError, match="marker"):
        decode_bytes(bytes(enc))


@given(keys, st.data())
def test_decode_bytes_rejects_non_zero_padding(k: bytes, data: st.DataObject) -> None:
    enc = bytearray(encode_bytes(k))
    tail = len(k) % ENC_GROUP_SIZE
    last = len(enc) - GROUP
    pos = data.draw(st.integers(min_value=last + tail, max_value=last + ENC_GROUP_SIZE - 1))
    enc[pos] = data.draw(st.integers(1, 255), label="pad byte")
    with pytest.raises(InvalidArgumentError, match="padding"):
        decode_bytes(bytes(enc))


@given(st.binary(max_size=60), st.integers(min_value=0, max_value=10))
def test_decode_bytes_on_arbitrary_bytes_is_canonical_or_rejects(data: bytes, off: int) -> None:
    """Garbage either raises InvalidArgumentError or decodes to a key whose
    encoding is exactly the bytes consumed: nothing decodes "approximately"."""
    try:
        k, end = decode_bytes(data, off)
    except InvalidArgumentError:
        return
    assert data[off:end] == encode_bytes(k)


# --------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------


@given(u64, u64)
def test_u64_desc_round_trips_and_sorts_descending(a: int, b: int) -> None:
    assert decode_u64_desc(encode_u64_desc(a)) == a
    assert (a < b) == (encode_u64_desc(a) > encode_u64_desc(b))


@pytest.mark.parametrize("bad", [b"", b"\x00" * 7, b"\x00" * 9])
def test_decode_u64_desc_rejects_wrong_length(bad: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        decode_u64_desc(bad)


@given(keys, timestamps, timestamps)
def test_append_ts_orders_versions_newest_first(k: bytes, t1: int, t2: int) -> None:
    e = encode_bytes(k)
    assert (append_ts(e, t1) < append_ts(e, t2)) == (t1 > t2)
    assert (append_ts(e, t1) == append_ts(e, t2)) == (t1 == t2)


@given(keys, keys, timestamps, timestamps)
def test_versions_of_different_keys_never_interleave(a: bytes, b: bytes, ta: int, tb: int) -> None:
    assume(a != b)
    lo, hi = sorted((a, b))
    # Every version of the smaller key sorts before every version of the larger
    # one, and after the bare (unversioned) encoded key of itself.
    assert append_ts(encode_bytes(lo), ta) < append_ts(encode_bytes(hi), tb)
    assert append_ts(encode_bytes(lo), ta) < encode_bytes(hi)
    assert encode_bytes(lo) < append_ts(encode_bytes(lo), ta)


@given(st.lists(st.tuples(keys, timestamps), max_size=30))
def test_sorted_versioned_keys_group_by_key_then_newest_first(
    versions: list[tuple[bytes, int]],
) -> None:
    encoded = sorted(append_ts(encode_bytes(k), ts) for k, ts in set(versions))
    decoded = []
    for vk in encoded:
        ek, ts = split_ts(vk)
        decoded.append((decode_bytes(ek)[0], ts))
    assert decoded == sorted(set(versions), key=lambda v: (v[0], -v[1]))


@given(keys, timestamps)
def test_split_ts_inverts_append_ts(k: bytes, ts: int) -> None:
    e = encode_bytes(k)
    assert split_ts(append_ts(e, ts)) == (e, ts)


@pytest.mark.parametrize("bad", [b"", b"1234567"])
def test_split_ts_rejects_short_input(bad: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        split_ts(bad)


# --------------------------------------------------------------------------
# key spaces
# --------------------------------------------------------------------------


@given(keys, keys)
def test_txn_and_raw_key_spaces_never_overlap(a: bytes, b: bytes) -> None:
    assert txn_key(a) != raw_key(b)
    assert not txn_key(a).startswith(raw_key(b))
    assert not raw_key(b).startswith(txn_key(a))
    assert decode_txn_key(txn_key(a)) == a
    assert decode_raw_key(raw_key(b)) == b
    with pytest.raises(InvalidArgumentError):
        decode_txn_key(raw_key(b))
    with pytest.raises(InvalidArgumentError):
        decode_raw_key(txn_key(a))


@given(keys, timestamps)
def test_decode_space_key_rejects_versioned_or_trailing_bytes(k: bytes, ts: int) -> None:
    with pytest.raises(InvalidArgumentError):
        decode_txn_key(append_ts(txn_key(k), ts))
    with pytest.raises(InvalidArgumentError):
        decode_raw_key(append_ts(raw_key(k), ts))


def _in(r: tuple[bytes, bytes], key: bytes) -> bool:
    return r[0] <= key < r[1]


@given(keys, st.one_of(st.none(), keys), keys, timestamps)
def test_txn_range_contains_exactly_its_keys(
    start: bytes, end: bytes | None, k: bytes, ts: int
) -> None:
    r = txn_range(start, end)
    expected = start <= k and (not end or k < end)
    assert _in(r, txn_key(k)) == expected
    assert _in(r, append_ts(txn_key(k), ts)) == expected
    # The other key space is never inside, versioned or not.
    assert not _in(r, raw_key(k))
    assert not _in(r, append_ts(raw_key(k), ts))


@given(keys, st.one_of(st.none(), keys), keys, timestamps)
def test_raw_range_contains_exactly_its_keys(
    start: bytes, end: bytes | None, k: bytes, ts: int
) -> None:
    r = raw_range(start, end)
    expected = start <= k and (not end or k < end)
    assert _in(r, raw_key(k)) == expected
    assert _in(r, append_ts(raw_key(k), ts)) == expected
    assert not _in(r, txn_key(k))
    assert not _in(r, append_ts(txn_key(k), ts))


def test_empty_end_means_unbounded() -> None:
    assert txn_range(b"a", b"") == txn_range(b"a", None)
    assert raw_range(b"a", b"") == raw_range(b"a", None)
    assert _in(txn_range(b"", None), txn_key(b"\xff" * 100))
    assert _in(raw_range(b"", None), raw_key(b"\xff" * 100))


# --------------------------------------------------------------------------
# Lock / Write records
# --------------------------------------------------------------------------

short_values = st.one_of(st.none(), st.binary(max_size=255))

locks = st.builds(
    Lock,
    lock_type=st.sampled_from(LockType),
    primary=st.binary(max_size=64),
    start_ts=u64,
    ttl=u64,
    min_commit_ts=u64,
    txn_size=u64,
    short_value=short_values,
)
writes = st.builds(
    Write,
    write_type=st.sampled_from(WriteType),
    start_ts=u64,
    short_value=short_values,
)


@given(locks)
def test_lock_round_trips(lock: Lock) -> None:
    back = Lock.from_bytes(lock.to_bytes())
    assert back == lock
    assert type(back.lock_type) is LockType


@given(writes)
def test_write_round_trips(write: Write) -> None:
    back = Write.from_bytes(write.to_bytes())
    assert back == write
    assert type(back.write_type) is WriteType


def test_empty_short_value_is_distinct_from_none() -> None:
    assert Write.from_bytes(Write(WriteType.PUT, 5, b"").to_bytes()).short_value == b""
    assert Write.from_bytes(Write(WriteType.PUT, 5, None).to_bytes()).short_value is None
    lock = Lock(LockType.PUT, b"p", 5, 10, short_value=b"")
    assert Lock.from_bytes(lock.to_bytes()).short_value == b""


def _lock_head_len(lock: Lock) -> int:
    return len(Lock(lock.lock_type, b"", lock.start_ts, lock.ttl).to_bytes())


@given(locks, st.data())
def test_lock_rejects_truncation_before_the_short_value(lock: Lock, data: st.DataObject) -> None:
    """Any cut inside the fixed head or the primary key is detected. (A cut
    inside the trailing short value cannot be: it has no length prefix.)"""
    raw = lock.to_bytes()
    cut = data.draw(st.integers(0, _lock_head_len(lock) + len(lock.primary) - 1), label="cut")
    with pytest.raises(InvalidArgumentError):
        Lock.from_bytes(raw[:cut])


@given(writes, st.data())
def test_write_rejects_truncated_head(write: Write, data: st.DataObject) -> None:
    raw = write.to_bytes()
    cut = data.draw(st.integers(0, len(Write(write.write_type, 0).to_bytes()) - 1), label="cut")
    with pytest.raises(InvalidArgumentError):
        Write.from_bytes(raw[:cut])


_LOCK_TYPES = {int(t) for t in LockType}
_WRITE_TYPES = {int(t) for t in WriteType}


@given(locks, st.integers(0, 255).filter(lambda b: b not in _LOCK_TYPES))
def test_lock_rejects_unknown_type(lock: Lock, bad_type: int) -> None:
    raw = bytearray(lock.to_bytes())
    raw[0] = bad_type
    with pytest.raises(InvalidArgumentError):
        Lock.from_bytes(bytes(raw))


@given(writes, st.integers(0, 255).filter(lambda b: b not in _WRITE_TYPES))
def test_write_rejects_unknown_type(write: Write, bad_type: int) -> None:
    raw = bytearray(write.to_bytes())
    raw[0] = bad_type
    with pytest.raises(InvalidArgumentError):
        Write.from_bytes(bytes(raw))


@given(locks, st.integers(0, 255).filter(lambda b: b != 1), st.binary(max_size=8))
def test_lock_rejects_bad_short_value_flag(lock: Lock, flag: int, rest: bytes) -> None:
    raw = Lock(
        lock.lock_type, lock.primary, lock.start_ts, lock.ttl, lock.min_commit_ts, lock.txn_size
    ).to_bytes()
    with pytest.raises(InvalidArgumentError):
        Lock.from_bytes(raw + bytes((flag,)) + rest)


@given(writes, st.integers(0, 255).filter(lambda b: b != 1), st.binary(max_size=8))
def test_write_rejects_bad_short_value_flag(write: Write, flag: int, rest: bytes) -> None:
    raw = Write(write.write_type, write.start_ts).to_bytes()
    with pytest.raises(InvalidArgumentError):
        Write.from_bytes(raw + bytes((flag,)) + rest)


@given(st.binary(max_size=80))
def test_record_decoders_never_raise_anything_else(data: bytes) -> None:
    """Arbitrary bytes decode to a record that re-encodes to the same bytes,
    or raise InvalidArgumentError: no struct.error, IndexError or silent
    garbage."""
    for cls in (Lock, Write):
        try:
            rec = cls.from_bytes(data)
        except InvalidArgumentError:
            continue
        assert rec.to_bytes() == data


def test_display_key_names_the_key_space() -> None:
    assert codec.display_key(b"") == "-inf"
    assert codec.display_key(codec.raw_key(b"user/007")) == "raw:user/007"
    assert codec.display_key(codec.txn_key(b"acct/bob")) == "txn:acct/bob"
    # Not a whole encoded key (a cut in the middle of a group): hex.
    assert codec.display_key(codec.raw_key(b"abc")[:3]).startswith("0x")
    long = codec.display_key(codec.raw_key(b"x" * 100), width=12)
    assert len(long) == 12 and long.endswith("…")
