"""kvstore.tablecodec: schemas, keys, row values, the bulk decoder."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import struct
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import tablecodec as tc
from kvstore.errors import InvalidArgumentError, RowFormatError, SchemaError

ALL_TYPES = [
    ("id", "BIGINT"),
    ("i", "INT"),
    ("f", "DOUBLE"),
    ("d", "DECIMAL(12,3)"),
    ("s", "VARCHAR(40)"),
    ("t", "TEXT"),
    ("b", "BOOLEAN"),
    ("day", "DATE"),
    ("at", "TIMESTAMP"),
]
TABLE = tc.make_table(7, "every_type", ALL_TYPES, "id")

ints = st.integers(-(1 << 63), (1 << 63) - 1)
int32 = st.integers(-(1 << 31), (1 << 31) - 1)
doubles = st.floats(allow_nan=False)
decimals = st.decimals(min_value=-(10**9) + 1, max_value=10**9 - 1, places=3, allow_nan=False)
texts = st.text(max_size=40)
dates = st.dates(min_value=dt.date(1, 1, 1))
stamps = st.datetimes(min_value=dt.datetime(1, 1, 1))


def maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


rows = st.fixed_dictionaries(
    {
        "id": ints,
        "i": maybe(int32),
        "f": maybe(doubles),
        "d": maybe(decimals),
        "s": maybe(texts),
        "t": maybe(st.text(max_size=300)),
        "b": maybe(st.booleans()),
        "day": maybe(dates),
        "at": maybe(stamps),
    }
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, max_size=30))
def test_rows_round_trip_through_the_bulk_decoder(batch: list[dict[str, Any]]) -> None:
    values = [TABLE.encode_row(r)[1] for r in batch]
    out = tc.decode_rows(TABLE, values).to_pylist()
    assert len(out) == len(batch)
    for got, want in zip(out, batch, strict=True):
        for k, v in want.items():
            assert _same(got[k], v), (k, got[k], v)


COMPOSITE = tc.make_table(8, "composite", ALL_TYPES, ("day", "i", "id"))
STRING_KEY = tc.make_table(9, "string_key", ALL_TYPES, ("s", "id"))


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, max_size=40), st.integers(0, 5))
def test_bulk_encoder_is_byte_for_byte_the_row_encoder(
    batch: list[dict[str, Any]], skip: int
) -> None:
    """encode_rows (numpy over whole columns) must equal encode_row (one row
    at a time) for every type, NULL pattern, key layout and a sliced input."""
    for table in (TABLE, COMPOSITE, STRING_KEY):
        usable = [r for r in batch if all(r[c] is not None for c in table.primary_key)]
        data = pa.Table.from_pylist(usable, schema=table.arrow_schema()).slice(
            min(skip, len(usable))
        )
        handles, values = tc.encode_rows(table, data)
        expected = [table.encode_row(r) for r in usable[min(skip, len(usable)) :]]
        assert handles == [h for h, _ in expected]
        assert values == [v for _, v in expected]


INDEXED = (
    tc.make_table(10, "indexed", ALL_TYPES, ("id",))
    .with_index("by_i", ["i"], False)
    .with_index("by_day_s", ["day", "s"], True)
    .with_index("by_d", ["d"], False)
)


@settings(max_examples=40, deadline=None)
@given(st.lists(rows, max_size=30, unique_by=lambda r: r["id"]))
def test_bulk_index_entries_are_byte_for_byte_index_entries(batch: list[dict[str, Any]]) -> None:
    usable = [r for r in batch if r["id"] is not None]
    data = pa.Table.from_pylist(usable, schema=INDEXED.arrow_schema())
    handles, _ = tc.encode_rows(INDEXED, data)
    got = tc.encode_index_entries(INDEXED, data, handles)
    canon = data.to_pylist()
    want = [
        (k, v)
        for idx in range(len(INDEXED.indexes))
        for h, row in zip(handles, canon, strict=True)
        for k, v in [INDEXED.index_entries(h, row)[idx][:2]]
    ]
    assert got == want


def test_bulk_encoder_refuses_what_the_row_encoder_refuses() -> None:
    t = tc.make_table(3, "t", [("id", "BIGINT"), ("i", "INT"), ("s", "VARCHAR(3)")], "id")
    with pytest.raises(SchemaError):
        tc.encode_rows(t, pa.table({"id": [1], "i": [1 << 40], "s": ["a"]}))
    with pytest.raises(SchemaError):
        tc.encode_rows(t, pa.table({"id": [1], "i": [1], "s": ["abcd"]}))
    with pytest.raises(SchemaError):
        tc.encode_rows(t, pa.table({"id": pa.array([None], pa.int64()), "i": [1], "s": ["a"]}))
    with pytest.raises(SchemaError):
        tc.encode_rows(t, pa.table({"id": [1], "s": ["a"]}))


def test_index_entries_unique_and_null() -> None:
    t = tc.make_table(4, "t", [("id", "BIGINT"), ("a", "INT"), ("b", "TEXT")], "id")
    t = t.with_index("ua", ["a"], unique=True).with_index("kb", ["b"], unique=False)
    assert t.version == 3
    h = t.handle_of(5)
    (ua, ua_v, ua_u), (kb, kb_value, kb_u) = t.index_entries(h, {"id": 5, "a": 9, "b": "x"})
    assert ua_u and ua_v == h and ua == tc.index_values_key(4, 1, [t.column("a").key_datum(9)])
    assert not kb_u and kb_value == b"0" and kb.endswith(h)
    assert kb.startswith(tc.index_prefix(4, 2))
    # A NULL in a unique index never collides: the entry takes the handle.
    ((nk, _, nu), _) = t.index_entries(h, {"id": 5, "a": None, "b": "x"})
    assert not nu and nk.endswith(h)
    again = tc.TableInfo.from_json(t.to_json())
    assert again.indexes == t.indexes


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, min_size=1, max_size=tc.SMALL_DECODE))
def test_small_decoder_equals_the_bulk_decoder(batch: list[dict[str, Any]]) -> None:
    """decode_rows answers a handful of values with a per-value Python path:
    it must give exactly what the numpy path gives, defaults of later-added
    columns included."""
    values = [TABLE.encode_row(r)[1] for r in batch]
    wider = TABLE.with_column(("added", "INT", True, 7))
    for table in (TABLE, wider):
        small = tc.decode_rows(table, values)
        bulk, known = tc.decode_rows_partial(table, values)
        assert len(known) == len(values)
        assert small.schema == bulk.schema
        assert small.to_pylist() == bulk.to_pylist()
        some = ["at", "id", "t"]
        assert tc.decode_rows(table, values, some).to_pylist() == bulk.select(some).to_pylist()
        # decode_pylist skips Arrow: the same values, down to their types and
        # Decimal exponents (the SQL layer writes them back into statements).
        as_python = tc.decode_pylist(table, values)
        assert [[(type(v), repr(v)) for v in r.values()] for r in as_python] == [
            [(type(v), repr(v)) for v in r.values()] for r in bulk.to_pylist()
        ]
        assert tc.decode_pylist(table, values, some) == bulk.select(some).to_pylist()


def test_small_decoder_refuses_what_the_bulk_decoder_refuses() -> None:
    value = TABLE.encode_row({"id": 1, "s": "x"})[1]
    narrow = tc.make_table(7, "every_type", ALL_TYPES[:3], "id")
    with pytest.raises(SchemaError):
        tc.decode_rows(narrow, [value])  # ids this schema does not know
    for bad in (value[:3], value[:-1], b"\x01" + value[1:]):
        with pytest.raises(RowFormatError):
            tc.decode_rows(TABLE, [bad])
        with pytest.raises(RowFormatError):
            tc.decode_pylist(TABLE, [bad])
    with pytest.raises(SchemaError):
        tc.decode_pylist(narrow, [value])


def test_every_type_maps_to_its_arrow_type() -> None:
    assert TABLE.arrow_schema().types == [
        pa.int64(),
        pa.int64(),
        pa.float64(),
        pa.decimal128(12, 3),
        pa.string(),
        pa.string(),
        pa.bool_(),
        pa.date32(),
        pa.timestamp("us"),
    ]
    assert [c.nullable for c in TABLE.columns][:2] == [False, True]  # key columns: NOT NULL


def test_schema_json_round_trip_keeps_defaults() -> None:
    t = tc.make_table(
        3,
        "x",
        [
            ("k", "VARCHAR(8)"),
            ("d", "DECIMAL(5,2)", True, "1.5"),
            ("day", "DATE", False, dt.date(2020, 2, 29)),
            ("at", "timestamp", True, dt.datetime(2021, 1, 1, 12, 0, 0, 7)),
        ],
        ["k"],
    )
    back = tc.TableInfo.from_json(t.to_json())
    assert back == t
    assert back.column("d").default == decimal.Decimal("1.50")
    assert back.column("at").type == "TIMESTAMP"


def test_added_column_takes_its_default_in_old_rows_and_null_without_one() -> None:
    v1 = tc.make_table(1, "t", [("id", "BIGINT"), ("a", "INT")], "id")
    old = [v1.encode_row({"id": i, "a": i}) for i in range(3)]
    v2 = v1.with_column(("name", "VARCHAR(10)", False, "none")).with_column(("x", "DOUBLE"))
    assert v2.version == 3
    assert [c.id for c in v2.columns] == [1, 2, 3, 4]
    new = v2.encode_row({"id": 9, "name": "nine", "x": 0.5})
    out = tc.decode_rows(v2, [v for _, v in [*old, new]]).to_pylist()
    assert out[0] == {"id": 0, "a": 0, "name": "none", "x": None}
    assert out[3] == {"id": 9, "a": None, "name": "nine", "x": 0.5}
    # A value written by the newer schema is refused by the older one: never guess.
    with pytest.raises(SchemaError):
        tc.decode_rows(v1, [new[1]])
    batch, known = tc.decode_rows_partial(v1, [old[0][1], new[1], old[1][1]])
    assert known.tolist() == [0, 2]
    assert batch.to_pylist() == [{"id": 0, "a": 0}, {"id": 1, "a": 1}]


def test_added_not_null_column_needs_a_default() -> None:
    v1 = tc.make_table(1, "t", [("id", "BIGINT")], "id")
    with pytest.raises(SchemaError):
        v1.with_column(("n", "INT", False))


def test_mixed_layouts_decode_in_input_order() -> None:
    t = tc.make_table(1, "t", [("id", "BIGINT"), ("a", "TEXT"), ("b", "INT")], "id")
    rows_in = [
        {"id": 1, "a": "x", "b": None},
        {"id": 2, "a": None, "b": 5},
        {"id": 3, "a": "yy", "b": 6},
        {"id": 4, "a": None, "b": None},
        {"id": 5, "a": "z", "b": None},
    ]
    values = [t.encode_row(r)[1] for r in rows_in]
    assert tc.decode_rows(t, values).to_pylist() == rows_in
    assert tc.decode_rows(t, values, ["b"]).to_pylist() == [{"b": r["b"]} for r in rows_in]
    assert tc.decode_rows(t, []).num_rows == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(max_size=12), ints, st.booleans()), min_size=2, max_size=20, unique=True
    )
)
def test_composite_key_order_is_primary_key_order(pks: list[tuple[str, int, bool]]) -> None:
    t = tc.make_table(
        9,
        "c",
        [("s", "VARCHAR(12)"), ("n", "BIGINT"), ("b", "BOOLEAN"), ("v", "INT")],
        ["s", "n", "b"],
    )
    assert not t.int_handle
    keys = {pk: t.row_key(pk) for pk in pks}
    assert sorted(pks) == sorted(pks, key=lambda pk: keys[pk])
    for pk, k in keys.items():
        tid, handle = tc.decode_row_key(k) or (0, b"")
        assert tid == 9
        assert t.decode_handle(handle) == pk


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(ints.map(lambda v: ("BIGINT", v)), doubles.map(lambda v: ("DOUBLE", v))),
        min_size=2,
        max_size=2,
    )
)
def test_single_column_key_order(pair: list[tuple[str, Any]]) -> None:
    for typ in ("BIGINT", "DOUBLE"):
        vals = [v for t, v in pair if t == typ]
        if len(vals) < 2:
            continue
        t = tc.make_table(1, "t", [("k", typ)], "k")
        a, b = (t.handle_of(v) for v in vals)
        x, y = (v + 0.0 if typ == "DOUBLE" else v for v in vals)
        assert (a < b) == (x < y) and (a == b) == (x == y)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(decimals, dates, stamps, texts), min_size=2, max_size=2))
def test_key_datum_order_for_other_types(vals: list[Any]) -> None:
    a, b = vals
    if type(a) is not type(b):
        return
    typ = {
        decimal.Decimal: "DECIMAL(12,3)",
        dt.date: "DATE",
        dt.datetime: "TIMESTAMP",
        str: "TEXT",
    }[type(a)]
    col = tc.ColumnInfo(1, "k", typ)
    ka, kb = col.key_datum(col.check(a)), col.key_datum(col.check(b))
    assert (ka < kb) == (a < b) and (ka == kb) == (a == b)
    assert col.decode_key_datum(ka, 0)[0] == col.check(a)


def test_int_handle_is_tidb_layout() -> None:
    t = tc.make_table(5, "t", [("id", "BIGINT"), ("v", "TEXT")], "id")
    assert t.int_handle
    assert t.handle_of(1) == struct.pack(">Q", (1 << 63) + 1)
    assert t.row_key(-1) == b"t" + struct.pack(">Q", (1 << 63) + 5) + b"_r" + b"\x7f" + b"\xff" * 7
    start, end = tc.row_range(5)
    assert start <= t.row_key(-(1 << 63)) and t.row_key((1 << 63) - 1) < end
    assert tc.decode_row_key(tc.table_meta_key(5)) is None
    assert tc.decode_table_meta_key(tc.table_meta_key(5)) == 5


def test_index_key_layout() -> None:
    col = tc.ColumnInfo(2, "name", "TEXT")
    k1 = tc.index_key(1, 3, [None], b"h")
    k2 = tc.index_key(1, 3, [col.key_datum("a")], b"h")
    assert k1 < k2  # NULL first
    assert k1.startswith(b"t" + tc.enc_int(1) + b"_i" + tc.enc_int(3))


@pytest.mark.parametrize(
    ("typ", "bad"),
    [
        ("BIGINT", "1"),
        ("BIGINT", True),
        ("BIGINT", 1 << 63),
        ("INT", 1 << 31),
        ("DOUBLE", "x"),
        ("DECIMAL(5,2)", decimal.Decimal("1.234")),
        ("DECIMAL(5,2)", 10000),
        ("DECIMAL(5,2)", decimal.Decimal("NaN")),
        ("VARCHAR(3)", "abcd"),
        ("VARCHAR(3)", b"ab"),
        ("BOOLEAN", 1),
        ("DATE", dt.datetime(2020, 1, 1)),
        ("TIMESTAMP", dt.date(2020, 1, 1)),
    ],
)
def test_values_that_do_not_fit_are_refused(typ: str, bad: Any) -> None:
    t = tc.make_table(1, "t", [("id", "BIGINT"), ("v", typ)], "id")
    with pytest.raises(SchemaError):
        t.encode_row({"id": 1, "v": bad})


@pytest.mark.parametrize(
    "make",
    [
        lambda: tc.make_table(1, "t", [("id", "BLOB")], "id"),
        lambda: tc.make_table(1, "t", [("id", "DECIMAL(40,2)")], "id"),
        lambda: tc.make_table(1, "t", [("id", "VARCHAR")], "id"),
        lambda: tc.make_table(1, "t", [("id", "BIGINT"), ("id", "INT")], "id"),
        lambda: tc.make_table(1, "t", [("id", "BIGINT")], "nope"),
        lambda: tc.make_table(1, "t", [("id", "BIGINT")], []),
        lambda: tc.make_table(1, "t", [], "id"),
        lambda: tc.make_table(0, "t", [("id", "BIGINT")], "id"),
        lambda: tc.make_table(1, "", [("id", "BIGINT")], "id"),
        lambda: tc.make_table(1, "t", [("id", "BIGINT", True, "x")], "id"),
        lambda: tc.TableInfo.from_json(b"{not json"),
        lambda: tc.TableInfo.from_json(b'{"id": 1}'),
    ],
)
def test_bad_schemas_are_refused(make: Any) -> None:
    with pytest.raises(SchemaError):
        make()


def test_rows_that_do_not_fit_are_refused() -> None:
    t = tc.make_table(1, "t", [("id", "BIGINT"), ("v", "INT", False)], "id")
    with pytest.raises(SchemaError):
        t.encode_row({"id": 1})  # NOT NULL without default
    with pytest.raises(SchemaError):
        t.encode_row({"id": 1, "v": 1, "extra": 2})
    with pytest.raises(SchemaError):
        t.encode_row({"v": 1})  # key missing: NULL key
    d = tc.make_table(1, "t", [("k", "DOUBLE")], "k")
    with pytest.raises(SchemaError):
        d.handle_of(float("nan"))


def test_malformed_values_raise_row_format_error() -> None:
    t = tc.make_table(1, "t", [("id", "BIGINT"), ("s", "TEXT")], "id")
    good = t.encode_row({"id": 1, "s": "hello"})[1]
    for bad in [
        b"",
        b"\x80\x00",
        good[:-1],
        b"\x01" + good[1:],
        good[:6] + b"\xff" * 8 + good[14:],
    ]:
        with pytest.raises(InvalidArgumentError):
            tc.decode_rows(t, [good, bad])
    not_utf8 = tc.encode_value(t.columns, {1: 1}) + b""
    raw = bytearray(t.encode_row({"id": 1, "s": "ab"})[1])
    raw[-1] = 0xFF
    with pytest.raises(RowFormatError):
        tc.decode_rows(t, [bytes(raw)])
    assert tc.decode_rows(t, [not_utf8]).to_pylist() == [{"id": 1, "s": None}]
