"""Bad input through the public client API (``kvstore.open(path)``, RocksDB).

Every malformed call must raise :class:`kvstore.errors.InvalidArgumentError`
(a :class:`~kvstore.errors.KVError`) and leave the store exactly as it was; a
transaction that hit such an error stays usable: it can still commit its valid
writes, or be rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvstore
from kvstore.errors import InvalidArgumentError, KVError
from kvstore.rawkv.store import MAX_TTL_SECONDS
from kvstore.storage import DATA_CFS
from kvstore.types import MAX_KEY_SIZE, MAX_VALUE_SIZE

BAD_KEYS: list[tuple[str, Any]] = [
    ("str", "key"),
    ("int", 7),
    ("None", None),
    ("bytearray", bytearray(b"key")),
    ("memoryview", memoryview(b"key")),
    ("list", [b"k"]),
    ("empty", b""),
    ("over 4 KiB", b"k" * (MAX_KEY_SIZE + 1)),
]
OVERSIZED_VALUE = b"v" * (MAX_VALUE_SIZE + 1)
BAD_VALUES: list[tuple[str, Any]] = [
    ("str", "value"),
    ("int", 7),
    ("None", None),
    ("bytearray", bytearray(b"value")),
    ("over 8 MiB", OVERSIZED_VALUE),
]
BAD_TTLS: list[Any] = [-1, 1.5, "10", True, MAX_TTL_SECONDS + 1, b"1"]
BAD_LIMITS: list[Any] = [-1, 1.5, "3", True]
BAD_BOUNDS: list[tuple[Any, Any]] = [
    ("a", None),
    (None, None),
    (1, None),
    (b"a", "z"),
    (b"a", 5),
    (bytearray(b"a"), None),
    (b"k" * (MAX_KEY_SIZE + 1), None),
    (b"a", b"z" * (MAX_KEY_SIZE + 1)),
]


def ids(cases: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in cases]


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[kvstore.Client]:
    """One populated store for the whole module: every test must leave it
    unchanged, which the ``unchanged`` fixture checks."""
    c = kvstore.open(tmp_path_factory.mktemp("bad_input") / "db")
    c.raw.batch_put([(b"r1", b"raw-1"), (b"r2", b"raw-2")])
    with c.begin() as txn:
        txn.put(b"t1", b"txn-1")
        txn.put(b"t2", b"L" * 1000)
    yield c
    c.close()


def contents(c: kvstore.Client) -> dict[str, list[tuple[bytes, bytes]]]:
    engine = c.backend.engine  # the embedded store's engine
    return {cf: list(engine.scan(cf, b"", None)) for cf in DATA_CFS}


@pytest.fixture
def unchanged(client) -> Iterator[None]:
    before = contents(client)
    yield
    assert contents(client) == before


def raises_invalid(fn: Callable[[], object]) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as ei:
        fn()
    return ei.value


# ----------------------------------------------------------------- the error itself
def test_invalid_argument_error_is_in_the_tree():
    assert issubclass(InvalidArgumentError, KVError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert kvstore.InvalidArgumentError is InvalidArgumentError
    assert kvstore.KVError is KVError
    e = raises_invalid(lambda: kvstore.types.validate_key("x"))
    assert isinstance(e, KVError)


# ----------------------------------------------------------------- raw: keys
@pytest.mark.parametrize("key", [k for _, k in BAD_KEYS], ids=ids(BAD_KEYS))
def test_raw_bad_key(client, unchanged, key):
    raw = client.raw
    raises_invalid(lambda: raw.get(key))
    raises_invalid(lambda: raw.put(key, b"v"))
    raises_invalid(lambda: raw.delete(key))
    raises_invalid(lambda: raw.batch_get([b"r1", key]))
    raises_invalid(lambda: raw.batch_put([(b"new", b"v"), (key, b"v")]))
    raises_invalid(lambda: raw.compare_and_swap(key, None, b"v"))
    raises_invalid(lambda: raw.put(key, b"v", ttl=10))
    # The store still answers normally.
    assert raw.get(b"r1") == b"raw-1"
    assert raw.get(b"new") is None


# ----------------------------------------------------------------- raw: values
@pytest.mark.parametrize("value", [v for _, v in BAD_VALUES], ids=ids(BAD_VALUES))
def test_raw_bad_value(client, unchanged, value):
    raw = client.raw
    raises_invalid(lambda: raw.put(b"new", value))
    raises_invalid(lambda: raw.put(b"r1", value))
    raises_invalid(lambda: raw.batch_put([(b"new", b"ok"), (b"new2", value)]))
    raises_invalid(lambda: raw.compare_and_swap(b"new", None, value))
    raises_invalid(lambda: raw.compare_and_swap(b"r1", b"raw-1", value))
    if value is not None:  # expected=None means "absent", which is valid
        raises_invalid(lambda: raw.compare_and_swap(b"r1", value, b"x"))
    assert raw.get(b"r1") == b"raw-1"
    assert raw.get(b"new") is None


@pytest.mark.parametrize(
    "pairs",
    [
        [[b"a", b"b"]],  # a list, not a tuple
        [(b"a",)],
        [(b"a", b"b", b"c")],
        [b"ab"],
        [(b"ok", b"v"), None],
    ],
)
def test_raw_batch_put_malformed_pairs(client, unchanged, pairs):
    raises_invalid(lambda: client.raw.batch_put(pairs))
    assert client.raw.get(b"ok") is None


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_raw_bad_ttl(client, unchanged, ttl):
    raw = client.raw
    raises_invalid(lambda: raw.put(b"new", b"v", ttl=ttl))
    raises_invalid(lambda: raw.put(b"r1", b"v", ttl=ttl))
    raises_invalid(lambda: raw.batch_put([(b"new", b"v")], ttl=ttl))
    raises_invalid(lambda: raw.compare_and_swap(b"new", None, b"v", ttl=ttl))
    assert raw.get(b"new") is None and raw.get(b"r1") == b"raw-1"


@pytest.mark.parametrize("limit", BAD_LIMITS)
def test_raw_bad_limit(client, unchanged, limit):
    raises_invalid(lambda: client.raw.scan(b"", None, limit))


@pytest.mark.parametrize(("start", "end"), BAD_BOUNDS)
def test_raw_bad_bounds(client, unchanged, start, end):
    raises_invalid(lambda: client.raw.scan(start, end))
    raises_invalid(lambda: client.raw.delete_range(start, end))


@pytest.mark.parametrize(("start", "end"), [(b"r2", b"r1"), (b"r1", b"r1")])
def test_raw_delete_range_needs_start_below_end(client, unchanged, start, end):
    raises_invalid(lambda: client.raw.delete_range(start, end))
    assert client.raw.scan(b"", None) == [(b"r1", b"raw-1"), (b"r2", b"raw-2")]


# ----------------------------------------------------------------- txn
@pytest.mark.parametrize("key", [k for _, k in BAD_KEYS], ids=ids(BAD_KEYS))
def test_txn_bad_key_then_commit_valid_writes(client, key):
    before = contents(client)
    txn = client.begin()
    txn.put(b"good", b"1")
    raises_invalid(lambda: txn.get(key))
    raises_invalid(lambda: txn.put(key, b"v"))
    raises_invalid(lambda: txn.insert(key, b"v"))
    raises_invalid(lambda: txn.delete(key))
    raises_invalid(lambda: txn.batch_get([b"t1", key]))
    raises_invalid(lambda: txn.lock_keys(b"t1", key))
    if key != b"":  # b"" is a valid scan start (the beginning)
        raises_invalid(lambda: txn.scan(key, None))
    if key not in (b"", None):  # b"" and None are valid scan ends (unbounded)
        raises_invalid(lambda: txn.scan(b"a", key))
    assert contents(client) == before  # nothing reached the store
    assert txn.is_active
    assert txn.get(b"t1") == b"txn-1"
    txn.commit()
    # Exactly the valid write was committed: one new write record, on b"good".
    after = contents(client)
    new_writes = [k for k, _ in after["write"] if k not in dict(before["write"])]
    assert len(new_writes) == 1
    assert after["default"] == before["default"]
    assert after["lock"] == before["lock"] == []
    check = client.begin()
    assert check.scan(b"", None) == [(b"good", b"1"), (b"t1", b"txn-1"), (b"t2", b"L" * 1000)]
    _undo_good(client)


def _undo_good(client: kvstore.Client) -> None:
    """Put the module store back to its initial data (history grows, data not)."""
    with client.begin() as txn:
        txn.delete(b"good")


@pytest.mark.parametrize("value", [v for _, v in BAD_VALUES], ids=ids(BAD_VALUES))
def test_txn_bad_value_then_rollback(client, unchanged, value):
    txn = client.begin()
    txn.put(b"good", b"1")
    raises_invalid(lambda: txn.put(b"good2", value))
    raises_invalid(lambda: txn.put(b"good", value))
    raises_invalid(lambda: txn.insert(b"good3", value))
    # The buffer still holds only the valid write.
    assert txn.get(b"good") == b"1"
    assert txn.get(b"good2") is None
    txn.rollback()
    assert not txn.is_active
    assert client.begin().get(b"good") is None


def test_txn_bad_value_then_commit(client):
    before = contents(client)
    with client.begin() as txn:
        txn.put(b"good", b"1")
        raises_invalid(lambda: txn.put(b"good", OVERSIZED_VALUE))
        raises_invalid(lambda: txn.put(b"other", "str"))
    after = contents(client)
    assert len(after["write"]) == len(before["write"]) + 1
    assert client.begin().batch_get([b"good", b"other"]) == {b"good": b"1"}
    _undo_good(client)


@pytest.mark.parametrize("limit", BAD_LIMITS)
def test_txn_bad_limit(client, unchanged, limit):
    txn = client.begin()
    raises_invalid(lambda: txn.scan(b"", None, limit))
    assert txn.scan(b"", None, 1) == [(b"t1", b"txn-1")]


@pytest.mark.parametrize(("start", "end"), BAD_BOUNDS)
def test_txn_bad_bounds(client, unchanged, start, end):
    txn = client.begin()
    raises_invalid(lambda: txn.scan(start, end))
    assert txn.is_active


def test_transaction_function_with_bad_input_is_not_retried(client, unchanged):
    calls = []

    def fn(txn: kvstore.Transaction) -> None:
        calls.append(txn.start_ts)
        txn.put(b"good", b"1")
        txn.put("bad", b"1")

    raises_invalid(lambda: client.transaction(fn))
    assert len(calls) == 1
    assert client.begin().get(b"good") is None


# ----------------------------------------------------------------- limits are inclusive
def test_maximum_sizes_are_accepted(client):
    key = b"K" * MAX_KEY_SIZE
    value = b"V" * MAX_VALUE_SIZE
    client.raw.put(key, value)
    assert client.raw.get(key) == value
    assert client.raw.compare_and_swap(key, value, b"x") == (True, value)
    client.raw.delete(key)
    with client.begin() as txn:
        txn.put(key, value)
    assert client.begin().get(key) == value
    with client.begin() as txn:
        txn.delete(key)
    assert client.begin().get(key) is None
