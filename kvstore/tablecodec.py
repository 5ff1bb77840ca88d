"""Tables over the key space: schemas, row/index keys, row values, bulk decode.

The bottom layer of everything relational (TiDB's ``tablecodec`` +
``rowcodec``), defined once and shared by ``kvstore.client.tables``, the
columnar replica and, later, the SQL layer. Pure: no I/O, no clock, no
randomness. All keys here are *user* keys of the transactional key space (the
client stores ``K`` as ``codec.txn_key(K)`` like any other key).

**Types** (:class:`ColumnInfo.type`, canonical spelling on the left)::

    BIGINT, INT        int64        (INT is range-checked to 32 bits)
    DOUBLE             float64
    DECIMAL(p,s)       decimal128(p, s)   1 <= p <= 38, 0 <= s <= p
    VARCHAR(n), TEXT   string (UTF-8; VARCHAR(n) checks n characters)
    BOOLEAN            bool
    DATE               date32       (days since 1970-01-01)
    TIMESTAMP          timestamp[us] (naive = UTC; aware values are converted)

**Keys** (``enc_int(v)`` = 8 bytes big-endian of ``v`` with the sign bit
flipped, so byte order = numeric order)::

    m T enc_int(table_id)              -> TableInfo as JSON (schema)
    m N <name, UTF-8>                  -> table id (decimal text)
    m C table_id                       -> last allocated table id (decimal text)
    t enc_int(table_id) _r <handle>    -> row value
    t enc_int(table_id) _i enc_int(index_id) <index datums> <handle>  -> b"" (layout only)

The **handle** is the concatenation of the primary-key columns' *key datums*:

* integer kinds (BIGINT, INT, BOOLEAN as 0/1, DATE as days, TIMESTAMP as
  microseconds): ``enc_int`` (8 bytes);
* DOUBLE: the IEEE-754 bits, sign bit flipped for ``>= 0``, all bits flipped
  for ``< 0`` (8 bytes; ``-0.0`` is stored as ``0.0``, NaN is refused);
* DECIMAL(p,s): the unscaled integer plus ``2**127`` as 16 bytes big-endian;
* strings: :func:`kvstore.codec.encode_bytes` of the UTF-8 (memcomparable,
  prefix-free; binary collation).

Every datum is either fixed-width or prefix-free, so concatenations compare
like the tuples of values: **row-key order = primary-key order**. A single
integer primary key gives exactly TiDB's int handle (8 bytes); TiDB tags the
datums of a common handle with a flag byte, we do not need to (the schema says
the types). Index datums are prefixed by ``0x00`` (NULL, sorts first) or
``0x01`` (a value followed by its key datum).

**Row values** carry column IDs (TiDB row format v2's idea), so adding a
column never rewrites old rows: a column whose id a value lacks takes its
default (NULL if it has none). Layout, all integers little-endian::

    u8  version = 0x80
    u8  flags   = 0
    u16 n_notnull
    u16 n_null
    u32 column id   x n_notnull   (ascending)
    u32 column id   x n_null      (ascending)
    u32 end offset  x n_notnull   (of each value, relative to the data start)
    data: BIGINT/INT/TIMESTAMP int64, DOUBLE float64, DATE int32,
          DECIMAL int128 (unscaled, Arrow's decimal128 layout), BOOLEAN u8,
          strings raw UTF-8

All columns, primary key included, are stored in the value, so decoding a
row never needs its key. :func:`decode_rows` decodes many values at once with
numpy gathers over one Arrow binary buffer (rows that share a column layout are
decoded together), never value by value into Python objects.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvstore.codec import decode_bytes, encode_bytes
from kvstore.errors import InvalidArgumentError, RowFormatError, SchemaError

# ------------------------------------------------------------------ keys
TABLE_PREFIX = b"t"
META_PREFIX = b"m"
ROW_SEP = b"_r"
INDEX_SEP = b"_i"
META_TABLE_PREFIX = b"mT"
META_NAME_PREFIX = b"mN"
META_TABLE_ID_COUNTER = b"mC" + b"table_id"

ROW_FORMAT_VERSION = 0x80
MAX_TABLE_NAME = 256

_U64BE = struct.Struct(">Q")
_SIGN = 1 << 63
_EPOCH = _dt.date(1970, 1, 1)
_EPOCH_ORD = _EPOCH.toordinal()
_EPOCH_DT = _dt.datetime(1970, 1, 1)


def enc_int(v: int) -> bytes:
    """8 bytes whose byte order is the numeric order of the int64 ``v``."""
    if not -_SIGN <= v < _SIGN:
        raise InvalidArgumentError(f"{v} does not fit in int64")
    return _U64BE.pack(v + _SIGN)


def dec_int(b: bytes, pos: int = 0) -> int:
    if len(b) < pos + 8:
        raise RowFormatError("memcomparable int is truncated")
    return int(_U64BE.unpack_from(b, pos)[0]) - _SIGN


def table_prefix(table_id: int) -> bytes:
    return TABLE_PREFIX + enc_int(table_id)


def row_prefix(table_id: int) -> bytes:
    """Every row key of the table starts with this (and nothing else does)."""
    return table_prefix(table_id) + ROW_SEP


def row_range(table_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of the table's row keys (user keys)."""
    p = row_prefix(table_id)
    return p, p[:-1] + bytes((p[-1] + 1,))


def row_key(table_id: int, handle: bytes) -> bytes:
    return row_prefix(table_id) + handle


def decode_row_key(key: bytes) -> tuple[int, bytes] | None:
    """``(table_id, handle)`` of a row key, or None for any other key."""
    if len(key) < 11 or key[:1] != TABLE_PREFIX or key[9:11] != ROW_SEP:
        return None
    return dec_int(key, 1), key[11:]


def index_prefix(table_id: int, index_id: int) -> bytes:
    """Every key of one secondary index starts with this."""
    return table_prefix(table_id) + INDEX_SEP + enc_int(index_id)


def index_values_key(table_id: int, index_id: int, values: Sequence[bytes | None]) -> bytes:
    """The index key of ``values`` without a handle: a unique index's key
    (its value is the handle), or the prefix of a non-unique index's keys."""
    parts = [index_prefix(table_id, index_id)]
    for v in values:
        parts.append(b"\x00" if v is None else b"\x01" + v)
    return b"".join(parts)


def index_key(table_id: int, index_id: int, values: Sequence[bytes | None], handle: bytes) -> bytes:
    """Non-unique secondary index key: ``values`` are key datums
    (:meth:`ColumnInfo.key_datum`) or None for NULL, then the row's handle
    (so equal values stay distinct keys); the value is empty."""
    return index_values_key(table_id, index_id, values) + handle


def table_meta_key(table_id: int) -> bytes:
    return META_TABLE_PREFIX + enc_int(table_id)


def decode_table_meta_key(key: bytes) -> int | None:
    """Table id of a schema key, None for any other key."""
    if len(key) != 10 or key[:2] != META_TABLE_PREFIX:
        return None
    return dec_int(key, 2)


def table_name_key(name: str) -> bytes:
    return META_NAME_PREFIX + name.encode()


# ------------------------------------------------------------------ types
class Kind(enum.Enum):
    INT = "int"
    DOUBLE = "double"
    DECIMAL = "decimal"
    STRING = "string"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"


_TYPE_RE = re.compile(r"^\s*([A-Za-z]+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")
_ALIASES = {
    "BIGINT": "BIGINT",
    "INT": "INT",
    "INTEGER": "INT",
    "DOUBLE": "DOUBLE",
    "DECIMAL": "DECIMAL",
    "NUMERIC": "DECIMAL",
    "VARCHAR": "VARCHAR",
    "TEXT": "TEXT",
    "BOOLEAN": "BOOLEAN",
    "BOOL": "BOOLEAN",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP",
}
_KINDS = {
    "BIGINT": Kind.INT,
    "INT": Kind.INT,
    "DOUBLE": Kind.DOUBLE,
    "DECIMAL": Kind.DECIMAL,
    "VARCHAR": Kind.STRING,
    "TEXT": Kind.STRING,
    "BOOLEAN": Kind.BOOL,
    "DATE": Kind.DATE,
    "TIMESTAMP": Kind.TIMESTAMP,
}
# Bytes of a value in a row, None: variable (strings).
_WIDTH = {
    Kind.INT: 8,
    Kind.DOUBLE: 8,
    Kind.DECIMAL: 16,
    Kind.STRING: None,
    Kind.BOOL: 1,
    Kind.DATE: 4,
    Kind.TIMESTAMP: 8,
}
_INT_RANGE = {"BIGINT": (-_SIGN, _SIGN - 1), "INT": (-(1 << 31), (1 << 31) - 1)}
_PACK = {
    Kind.INT: struct.Struct("<q").pack,
    Kind.TIMESTAMP: struct.Struct("<q").pack,
    Kind.DOUBLE: struct.Struct("<d").pack,
    Kind.DATE: struct.Struct("<i").pack,
}


def _parse_type(spec: object) -> tuple[str, Kind, int, int]:
    """``(canonical, kind, p_or_len, scale)`` of a type spelling."""
    if not isinstance(spec, str):
        raise SchemaError(f"a column type is a string like 'BIGINT', not {spec!r}")
    m = _TYPE_RE.match(spec)
    base = _ALIASES.get(m.group(1).upper()) if m else None
    if m is None or base is None:
        raise SchemaError(f"unknown column type {spec!r}")
    a, b = m.group(2), m.group(3)
    if base == "DECIMAL":
        p = int(a) if a is not None else 10
        s = int(b) if b is not None else 0
        if not (1 <= p <= 38 and 0 <= s <= p):
            raise SchemaError(f"DECIMAL({p},{s}) needs 1 <= precision <= 38, 0 <= scale <= p")
        return f"DECIMAL({p},{s})", Kind.DECIMAL, p, s
    if base == "VARCHAR":
        if a is None or b is not None or not 1 <= int(a) <= 1 << 24:
            raise SchemaError(f"VARCHAR needs one length between 1 and 2^24: {spec!r}")
        return f"VARCHAR({int(a)})", Kind.STRING, int(a), 0
    if a is not None:
        raise SchemaError(f"type {base} takes no arguments: {spec!r}")
    return base, _KINDS[base], 0, 0


@dataclass(frozen=True)
class ColumnInfo:
    """One column. ``id`` is stable for the table's life (row values refer to
    columns by id, never by name or position). ``default`` is the value a row
    gets when it does not mention the column (on insert, or an old row read
    after the column was added); None means NULL."""

    id: int
    name: str
    type: str
    nullable: bool = True
    default: Any = None
    kind: Kind = field(init=False, repr=False, compare=False)
    precision: int = field(init=False, repr=False, compare=False)
    scale: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or not 0 < self.id < 1 << 31:
            raise SchemaError(f"column id must be a positive int32, not {self.id!r}")
        if not isinstance(self.name, str) or not self.name or len(self.name) > 64:
            raise SchemaError(
                f"column name must be a non-empty string of <= 64 chars: {self.name!r}"
            )
        if not isinstance(self.nullable, bool):
            raise SchemaError("nullable must be a bool")
        canonical, kind, p, s = _parse_type(self.type)
        object.__setattr__(self, "type", canonical)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "precision", p)
        object.__setattr__(self, "scale", s)
        if self.default is not None:
            object.__setattr__(self, "default", self.check(self.default))

    # ---------------------------------------------------------- arrow
    @property
    def arrow_type(self) -> pa.DataType:
        k = self.kind
        if k is Kind.INT:
            return pa.int64()
        if k is Kind.DOUBLE:
            return pa.float64()
        if k is Kind.DECIMAL:
            return pa.decimal128(self.precision, self.scale)
        if k is Kind.STRING:
            return pa.string()
        if k is Kind.BOOL:
            return pa.bool_()
        if k is Kind.DATE:
            return pa.date32()
        return pa.timestamp("us")

    @property
    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type, nullable=self.nullable)

    # ---------------------------------------------------------- values
    def check(self, v: Any) -> Any:
        """``v`` as the canonical Python value of this column (Decimal at the
        column's scale, naive UTC datetime, ...), or SchemaError."""
        if v is None:
            if not self.nullable:
                raise SchemaError(f"column {self.name!r} is NOT NULL")
            return None
        k = self.kind
        bad = SchemaError(f"column {self.name!r} ({self.type}) cannot hold {v!r}")
        if k is Kind.INT:
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad
            lo, hi = _INT_RANGE[self.type]
            if not lo <= v <= hi:
                raise SchemaError(f"{v} is out of range for {self.type} column {self.name!r}")
            return v
        if k is Kind.DOUBLE:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad
            return float(v)
        if k is Kind.DECIMAL:
            if isinstance(v, bool) or not isinstance(v, (int, str, decimal.Decimal)):
                raise bad
            try:
                d = decimal.Decimal(v)
            except decimal.InvalidOperation:
                raise bad from None
            if not d.is_finite():
                raise bad
            unscaled = d.scaleb(self.scale)
            if unscaled != unscaled.to_integral_value():
                raise SchemaError(f"{v} has more than {self.scale} decimals ({self.name!r})")
            if abs(int(unscaled)) >= 10**self.precision:
                raise SchemaError(f"{v} does not fit {self.type} ({self.name!r})")
            return decimal.Decimal(int(unscaled)).scaleb(-self.scale)
        if k is Kind.STRING:
            if not isinstance(v, str):
                raise bad
            if self.type != "TEXT" and len(v) > self.precision:
                raise SchemaError(f"string of {len(v)} chars is too long for {self.type}")
            try:
                v.encode()
            except UnicodeEncodeError:
                raise bad from None
            return v
        if k is Kind.BOOL:
            if not isinstance(v, bool):
                raise bad
            return v
        if k is Kind.DATE:
            if not isinstance(v, _dt.date) or isinstance(v, _dt.datetime):
                raise bad
            return v
        if not isinstance(v, _dt.datetime):
            raise bad
        if v.tzinfo is not None:
            v = v.astimezone(_dt.UTC).replace(tzinfo=None)
        return v

    def _int_of(self, v: Any) -> int:
        """The integer a value of an int-like kind is stored as."""
        k = self.kind
        if k is Kind.DATE:
            return int(v.toordinal() - _EPOCH_ORD)
        if k is Kind.TIMESTAMP:
            d: _dt.timedelta = v - _EPOCH_DT
            return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
        if k is Kind.DECIMAL:
            return int(decimal.Decimal(v).scaleb(self.scale))
        return int(v)

    def value_bytes(self, v: Any) -> bytes:
        """Bytes of a canonical non-NULL value inside a row value."""
        k = self.kind
        if k is Kind.STRING:
            return bytes(v.encode())
        if k is Kind.BOOL:
            return b"\x01" if v else b"\x00"
        if k is Kind.DECIMAL:
            return self._int_of(v).to_bytes(16, "little", signed=True)
        if k is Kind.DOUBLE:
            return _PACK[k](v)
        return _PACK[k](self._int_of(v))

    def key_datum(self, v: Any) -> bytes:
        """Memcomparable bytes of a canonical non-NULL value (see the module
        docstring): byte order = value order."""
        k = self.kind
        if k is Kind.STRING:
            return encode_bytes(v.encode())
        if k is Kind.DOUBLE:
            if math.isnan(v):
                raise SchemaError(f"NaN cannot be part of a key ({self.name!r})")
            bits = int(_U64BE.unpack(struct.pack(">d", v + 0.0))[0])
            bits = bits | _SIGN if not bits & _SIGN else ~bits & (_SIGN * 2 - 1)
            return _U64BE.pack(bits)
        if k is Kind.DECIMAL:
            return (self._int_of(v) + (1 << 127)).to_bytes(16, "big")
        return enc_int(self._int_of(v))

    def decode_key_datum(self, b: bytes, pos: int) -> tuple[Any, int]:
        k = self.kind
        if k is Kind.STRING:
            raw, pos = decode_bytes(b, pos)
            try:
                return raw.decode(), pos
            except UnicodeDecodeError:
                raise RowFormatError("key datum is not UTF-8") from None
        width = 16 if k is Kind.DECIMAL else 8
        chunk = b[pos : pos + width]
        if len(chunk) != width:
            raise RowFormatError("key datum is truncated")
        pos += width
        if k is Kind.DOUBLE:
            bits = int(_U64BE.unpack(chunk)[0])
            bits = bits & ~_SIGN if bits & _SIGN else ~bits & (_SIGN * 2 - 1)
            return float(struct.unpack(">d", _U64BE.pack(bits))[0]), pos
        if k is Kind.DECIMAL:
            n = int.from_bytes(chunk, "big") - (1 << 127)
            return decimal.Decimal(n).scaleb(-self.scale), pos
        n = int(_U64BE.unpack(chunk)[0]) - _SIGN
        if k is Kind.DATE:
            return _dt.date.fromordinal(n + _EPOCH_ORD), pos
        if k is Kind.TIMESTAMP:
            return _EPOCH_DT + _dt.timedelta(microseconds=n), pos
        if k is Kind.BOOL:
            return bool(n), pos
        return n, pos

    # ---------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        d = self.default
        if isinstance(d, (decimal.Decimal, _dt.date)):
            d = str(d) if isinstance(d, decimal.Decimal) else d.isoformat()
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "nullable": self.nullable,
            "default": d,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ColumnInfo:
        col = cls(int(obj["id"]), obj["name"], obj["type"], bool(obj["nullable"]))
        d = obj.get("default")
        if d is not None:
            if col.kind is Kind.DATE:
                d = _dt.date.fromisoformat(d)
            elif col.kind is Kind.TIMESTAMP:
                d = _dt.datetime.fromisoformat(d)
            col = replace(col, default=d)
        return col


ColumnDef = ColumnInfo | tuple[Any, ...]


@dataclass(frozen=True)
class IndexInfo:
    """A secondary index over ``columns`` (names, in index order). A unique
    index maps its values to the handle (key :func:`index_values_key`, value
    the handle), unless a value is NULL: NULLs never collide (as in MySQL),
    so such an entry takes the non-unique form (:func:`index_key`)."""

    id: int
    name: str
    columns: tuple[str, ...]
    unique: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "columns": list(self.columns),
            "unique": self.unique,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> IndexInfo:
        return cls(int(obj["id"]), obj["name"], tuple(obj["columns"]), bool(obj["unique"]))


@dataclass(frozen=True)
class TableInfo:
    """A table's schema: the value of :func:`table_meta_key` (JSON).

    ``primary_key`` names the key columns in key order; they are NOT NULL.
    ``version`` grows by one with every schema change. ``importing``, when
    not 0, is the timestamp at which a physical bulk import (``sql.load``)
    took the table over: until it clears the mark, statements refuse the
    table (its rows are being written outside transactions)."""

    id: int
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]
    version: int = 1
    indexes: tuple[IndexInfo, ...] = ()
    importing: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or not 0 < self.id < _SIGN:
            raise SchemaError(f"table id must be a positive int64, not {self.id!r}")
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_TABLE_NAME:
            raise SchemaError(f"table name must be a non-empty string: {self.name!r}")
        cols = tuple(self.columns)
        if not cols or not all(isinstance(c, ColumnInfo) for c in cols):
            raise SchemaError("a table needs at least one column (ColumnInfo)")
        names = [c.name for c in cols]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate column names in {names}")
        if len({c.id for c in cols}) != len(cols):
            raise SchemaError("duplicate column ids")
        raw_pk: object = self.primary_key
        pk = (raw_pk,) if isinstance(raw_pk, str) else tuple(self.primary_key)
        if not pk or len(set(pk)) != len(pk) or not set(pk) <= set(names):
            raise SchemaError(f"primary key {pk} must name distinct columns of {names}")
        # Key columns are NOT NULL (as in MySQL, whatever the definition said).
        cols = tuple(replace(c, nullable=False) if c.name in pk and c.nullable else c for c in cols)
        for c in cols:
            if c.name in pk and c.default is not None and c.kind is Kind.DOUBLE:
                c.key_datum(c.default)  # NaN check
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "primary_key", pk)
        by_name = {c.name: c for c in cols}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_pk_cols", tuple(by_name[n] for n in pk))
        idx = tuple(self.indexes)
        if len({i.name.lower() for i in idx}) != len(idx) or len({i.id for i in idx}) != len(idx):
            raise SchemaError(f"duplicate index names or ids in table {self.name!r}")
        for i in idx:
            if not i.columns or not set(i.columns) <= set(names):
                raise SchemaError(f"index {i.name!r} must name columns of {self.name!r}")
        object.__setattr__(self, "indexes", idx)

    # ---------------------------------------------------------- lookups
    def column(self, name: str) -> ColumnInfo:
        col: ColumnInfo | None = self._by_name.get(name)  # type: ignore[attr-defined]
        if col is None:
            raise SchemaError(f"table {self.name!r} has no column {name!r}")
        return col

    @property
    def pk_columns(self) -> tuple[ColumnInfo, ...]:
        pks: tuple[ColumnInfo, ...] = self._pk_cols  # type: ignore[attr-defined]
        return pks

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def int_handle(self) -> bool:
        """One integer primary-key column: the handle is TiDB's int handle."""
        return len(self.pk_columns) == 1 and self.pk_columns[0].kind is Kind.INT

    def arrow_schema(self, columns: Sequence[str] | None = None) -> pa.Schema:
        cols = self.columns if columns is None else [self.column(n) for n in columns]
        return pa.schema([c.arrow_field for c in cols])

    def with_column(self, column: ColumnDef) -> TableInfo:
        """This schema plus one column (next free id), version + 1."""
        new_id = max(c.id for c in self.columns) + 1
        col = _column_of(new_id, column)
        if not col.nullable and col.default is None:
            raise SchemaError("an added NOT NULL column needs a default (old rows take it)")
        return replace(self, columns=(*self.columns, col), version=self.version + 1)

    def with_index(self, name: str, columns: Sequence[str], unique: bool) -> TableInfo:
        """This schema plus one secondary index (next free id), version + 1."""
        for n in columns:
            self.column(n)
        new_id = max((i.id for i in self.indexes), default=0) + 1
        index = IndexInfo(new_id, name, tuple(columns), unique)
        return replace(self, indexes=(*self.indexes, index), version=self.version + 1)

    def index(self, name: str) -> IndexInfo:
        for i in self.indexes:
            if i.name.lower() == name.lower():
                return i
        raise SchemaError(f"table {self.name!r} has no index {name!r}")

    def index_entries(
        self, handle: bytes, row: Mapping[str, Any]
    ) -> list[tuple[bytes, bytes, bool]]:
        """``(key, value, unique)`` of every index entry of a row (canonical
        values by column name). ``unique`` marks a key whose existence
        elsewhere is a constraint violation."""
        out = []
        for i in self.indexes:
            vals = [row.get(n) for n in i.columns]
            datums = [
                None if v is None else self.column(n).key_datum(v)
                for n, v in zip(i.columns, vals, strict=True)
            ]
            if i.unique and all(v is not None for v in vals):
                out.append((index_values_key(self.id, i.id, datums), handle, True))
            else:
                # The value is never read; "0" as in TiDB (values may not be empty).
                out.append((index_key(self.id, i.id, datums, handle), b"0", False))
        return out

    # ---------------------------------------------------------- JSON
    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "primary_key": list(self.primary_key),
            "columns": [c.to_json() for c in self.columns],
        }
        if self.indexes:
            obj["indexes"] = [i.to_json() for i in self.indexes]
        if self.importing:
            obj["importing"] = self.importing
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TableInfo:
        try:
            obj = json.loads(data)
            return cls(
                id=int(obj["id"]),
                name=obj["name"],
                columns=tuple(ColumnInfo.from_json(c) for c in obj["columns"]),
                primary_key=tuple(obj["primary_key"]),
                version=int(obj["version"]),
                indexes=tuple(IndexInfo.from_json(i) for i in obj.get("indexes", ())),
                importing=int(obj.get("importing", 0)),
            )
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"malformed table schema: {e!r}") from None

    # ---------------------------------------------------------- rows
    def handle_of(self, pk: Any) -> bytes:
        """Handle of a primary key: a scalar for a one-column key, else a
        tuple of values in key order."""
        vals = (pk,) if len(self.pk_columns) == 1 and not isinstance(pk, tuple) else tuple(pk)
        if len(vals) != len(self.pk_columns):
            raise SchemaError(f"primary key of {self.name!r} has {len(self.pk_columns)} columns")
        return b"".join(c.key_datum(c.check(v)) for c, v in zip(self.pk_columns, vals, strict=True))

    def decode_handle(self, handle: bytes) -> tuple[Any, ...]:
        pos, out = 0, []
        for c in self.pk_columns:
            v, pos = c.decode_key_datum(handle, pos)
            out.append(v)
        if pos != len(handle):
            raise RowFormatError("handle has trailing bytes")
        return tuple(out)

    def row_key(self, pk: Any) -> bytes:
        return row_key(self.id, self.handle_of(pk))

    def encode_row(self, row: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """``(handle, value)`` of a row given as ``{column name: value}``.
        Missing columns take their default; unknown names are refused."""
        return self.encode_canonical(self.canonical(row))

    def canonical(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Every column's canonical value (checked) of a row given as
        ``{column name: value}``; missing columns take their default."""
        if not isinstance(row, Mapping):
            raise SchemaError(f"a row is a mapping of column names to values, not {row!r}")
        for name in row:
            self.column(name)
        return {c.name: c.check(row.get(c.name, c.default)) for c in self.columns}

    def encode_canonical(self, canon: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """``(handle, value)`` of a row of :meth:`canonical` values."""
        handle = b"".join(c.key_datum(canon[c.name]) for c in self.pk_columns)
        return handle, encode_value(self.columns, {c.id: canon[c.name] for c in self.columns})


def encode_value(columns: Iterable[ColumnInfo], values: Mapping[int, Any]) -> bytes:
    """Row value of canonical ``values`` (by column id; a missing id is
    simply absent from the value, so readers use the column default)."""
    notnull: list[tuple[int, bytes]] = []
    nulls: list[int] = []
    for c in sorted(columns, key=lambda c: c.id):
        if c.id not in values:
            continue
        v = values[c.id]
        if v is None:
            nulls.append(c.id)
        else:
            notnull.append((c.id, c.value_bytes(v)))
    ends, pos = [], 0
    for _, b in notnull:
        pos += len(b)
        ends.append(pos)
    head = struct.pack(
        f"<BBHH{len(notnull) + len(nulls)}I{len(ends)}I",
        ROW_FORMAT_VERSION,
        0,
        len(notnull),
        len(nulls),
        *(i for i, _ in notnull),
        *nulls,
        *ends,
    )
    return head + b"".join(b for _, b in notnull)


def _column_of(col_id: int, spec: ColumnDef) -> ColumnInfo:
    if isinstance(spec, ColumnInfo):
        return replace(spec, id=col_id)
    if isinstance(spec, tuple) and 2 <= len(spec) <= 4:
        return ColumnInfo(col_id, *spec)
    raise SchemaError(f"a column is ColumnInfo or (name, type[, nullable[, default]]): {spec!r}")


def make_table(
    table_id: int, name: str, columns: Sequence[ColumnDef], primary_key: Sequence[str] | str
) -> TableInfo:
    """A version-1 schema; columns get ids 1, 2, ... in order."""
    raw: object = columns
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise SchemaError("columns must be a list")
    pk = (primary_key,) if isinstance(primary_key, str) else tuple(primary_key)
    return TableInfo(table_id, name, tuple(_column_of(i + 1, c) for i, c in enumerate(columns)), pk)


# ------------------------------------------------------------------ bulk decode
def _gather(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Bytes ``data[pos[i] : pos[i] + width]`` for each i, as a (n, width) array."""
    # Row-wise take from a strided window view: one memcpy per row, ~4x
    # faster than indexing every byte.
    out: np.ndarray = np.lib.stride_tricks.sliding_window_view(data, width)[pos]
    return out


def _gather_u32(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (
        np.ascontiguousarray(_gather(data, pos, 4)).view("<u4").reshape(len(pos)).astype(np.int64)
    )


def _gather_u16(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    out: np.ndarray = data[pos].astype(np.int64) | (data[pos + 1].astype(np.int64) << 8)
    return out


def _constant(col: ColumnInfo, n: int) -> pa.Array:
    if col.default is None:
        return pa.nulls(n, col.arrow_type)
    return pa.repeat(pa.scalar(col.default, col.arrow_type), n)


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)``, without its sort when every
    key is the same (values of one schema version usually are)."""
    if (keys == keys[0]).all():
        return keys[:1], np.zeros(len(keys), dtype=np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, inverse


def _column_array(
    col: ColumnInfo, data: np.ndarray, vstart: np.ndarray, vlen: np.ndarray
) -> pa.Array:
    n = len(vstart)
    width = _WIDTH[col.kind]
    if width is not None:
        if n and not (vlen == width).all():
            raise RowFormatError(f"column {col.name!r}: a value is not {width} bytes")
        raw = np.ascontiguousarray(_gather(data, vstart, width))
        if col.kind is Kind.BOOL:
            return pa.array(raw.reshape(n) != 0, pa.bool_())
        return pa.Array.from_buffers(col.arrow_type, n, [None, pa.py_buffer(raw.tobytes())])
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(vlen, out=offsets[1:])
    total = int(offsets[-1])
    if total >= 1 << 31:
        raise RowFormatError("string column over 2 GiB in one batch")
    idx = np.repeat(vstart - offsets[:-1], vlen) + np.arange(total, dtype=np.int64)
    chars = data[idx]
    arr = pa.Array.from_buffers(
        pa.string(),
        n,
        [None, pa.py_buffer(offsets.astype(np.int32).tobytes()), pa.py_buffer(chars.tobytes())],
    )
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        raise RowFormatError(f"column {col.name!r}: a value is not UTF-8") from None
    return arr


def decode_rows_partial(
    table: TableInfo, values: Sequence[bytes], columns: Sequence[ColumnInfo] | None = None
) -> tuple[pa.RecordBatch, np.ndarray]:
    """Decode many row values at once; ``(batch, known)``.

    ``known`` are the indices (ascending) of the values decoded into ``batch``
    (one row each, in that order). A value that mentions a column id the
    schema does not know (written by a newer schema) is left out rather than
    decoded with a guess; a columnar replica keeps such rows until the newer
    schema arrives. Field names are the column names. Raises
    :class:`RowFormatError` on malformed bytes."""
    cols = list(table.columns if columns is None else columns)
    schema = pa.schema([c.arrow_field for c in cols])
    n = len(values)
    if n == 0:
        return pa.RecordBatch.from_pylist([], schema=schema), np.zeros(0, dtype=np.int64)
    try:
        # One buffer of all values plus their offsets, built by C loops
        # (bytes.join, map(len)): no Python object per value is created.
        joined = b"".join(values)
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
    except TypeError:
        raise RowFormatError("row values must be bytes") from None
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    # Pad so that a gather a few bytes past a short value stays inside the
    # buffer; lengths are validated before any gathered byte is used.
    data = np.frombuffer(joined + bytes(16), dtype=np.uint8)
    starts = offsets[:-1]
    if (lens < 6).any():
        raise RowFormatError("row value shorter than its header")
    if (data[starts] != ROW_FORMAT_VERSION).any():
        raise RowFormatError("unknown row format version")
    nn = _gather_u16(data, starts + 2)
    nnull = _gather_u16(data, starts + 4)
    head = 6 + 8 * nn + 4 * nnull
    if (lens < head).any():
        raise RowFormatError("row value shorter than its column directory")
    by_id = {c.id: c for c in cols}
    known_ids = {c.id for c in table.columns} | set(by_id)
    pieces: list[tuple[np.ndarray, list[pa.Array]]] = []
    shape = nn * 65536 + nnull
    shape_keys, shape_of = _groups(shape)
    for si, shape in enumerate(shape_keys.tolist()):
        k_nn, k_null = divmod(int(shape), 65536)
        m = k_nn + k_null
        rows = np.nonzero(shape_of == si)[0]
        rs = starts[rows]
        if m:
            id_pos = rs[:, None] + 6 + 4 * np.arange(m, dtype=np.int64)
            ids = (
                np.ascontiguousarray(_gather(data, id_pos.reshape(-1), 4))
                .view("<u4")
                .reshape(len(rows), m)
            )
            if (ids == ids[0]).all():  # the common case: one layout, no sort
                layouts, layout_of = ids[:1], np.zeros(len(rows), dtype=np.int64)
            else:
                layouts, layout_of = np.unique(ids, axis=0, return_inverse=True)
                layout_of = layout_of.reshape(-1)
        else:
            layouts, layout_of = np.zeros((1, 0), dtype=np.uint32), np.zeros(len(rows), np.int64)
        for li, layout in enumerate(layouts.tolist()):
            sub = rows[layout_of == li]
            if not set(layout) <= known_ids:
                continue
            if len(set(layout)) != m:
                raise RowFormatError("a column id appears twice in a row value")
            ss = starts[sub]
            data_start = ss + 6 + 8 * k_nn + 4 * k_null
            ends = np.zeros((len(sub), k_nn + 1), dtype=np.int64)
            for j in range(k_nn):
                ends[:, j + 1] = _gather_u32(data, ss + 6 + 4 * m + 4 * j)
            if (np.diff(ends, axis=1) < 0).any() or (
                ends[:, -1] != lens[sub] - (data_start - ss)
            ).any():
                raise RowFormatError("row value offsets are inconsistent")
            pos_of: dict[int, int] = {cid: j for j, cid in enumerate(layout[:k_nn])}
            null_ids = set(layout[k_nn:])
            arrays = []
            for c in cols:
                at = pos_of.get(c.id)
                if at is not None:
                    vstart = data_start + ends[:, at]
                    arrays.append(_column_array(c, data, vstart, ends[:, at + 1] - ends[:, at]))
                elif c.id in null_ids:
                    arrays.append(pa.nulls(len(sub), c.arrow_type))
                else:
                    arrays.append(_constant(c, len(sub)))
            pieces.append((sub, arrays))
    if not pieces:
        return pa.RecordBatch.from_pylist([], schema=schema), np.zeros(0, dtype=np.int64)
    if len(pieces) == 1:
        order, arrays = pieces[0]
        if len(order) > 1 and (np.diff(order) < 0).any():
            perm = np.argsort(order, kind="stable")
            arrays = [a.take(pa.array(perm)) for a in arrays]
            order = order[perm]
        return _batch(schema, arrays), order
    order = np.concatenate([p[0] for p in pieces])
    perm = pa.array(np.argsort(order, kind="stable"))
    out = [pa.concat_arrays([p[1][i] for p in pieces]).take(perm) for i in range(len(cols))]
    return _batch(schema, out), np.sort(order)


def _batch(schema: pa.Schema, arrays: list[pa.Array]) -> pa.RecordBatch:
    # A NOT NULL field must not receive nulls from a malformed value.
    for f, a in zip(schema, arrays, strict=True):
        if not f.nullable and a.null_count:
            raise RowFormatError(f"NULL stored in NOT NULL column {f.name!r}")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# Below this many values, decoding value by value in Python beats the numpy
# path, whose fixed cost (~1 ms) is what a point lookup would pay otherwise.
SMALL_DECODE = 16
_HEAD = struct.Struct("<BBHH")


def _decode_small(
    table: TableInfo, values: Sequence[bytes], cols: Sequence[ColumnInfo]
) -> pa.RecordBatch:
    rows = _decode_dicts(table, values, cols)
    schema = pa.schema([c.arrow_field for c in cols])
    try:
        return pa.RecordBatch.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. NULL in a NOT NULL column
        raise RowFormatError(f"row value does not fit the schema: {e}") from None


def _decode_dicts(
    table: TableInfo, values: Sequence[bytes], cols: Sequence[ColumnInfo]
) -> list[dict[str, Any]]:
    by_id = {c.id: c for c in table.columns}
    rows: list[dict[str, Any]] = []
    for v in values:
        try:
            version, _flags, n_notnull, n_null = _HEAD.unpack_from(v, 0)
            if version != ROW_FORMAT_VERSION:
                raise RowFormatError(f"unknown row format version {version:#x}")
            n = n_notnull + n_null
            ids = struct.unpack_from(f"<{n}I", v, 6)
            ends = struct.unpack_from(f"<{n_notnull}I", v, 6 + 4 * n)
        except struct.error:
            raise RowFormatError("row value is truncated") from None
        base = 6 + 4 * n + 4 * n_notnull
        if n_notnull and base + ends[-1] != len(v):
            raise RowFormatError("row value length does not match its offsets")
        if any(i not in by_id for i in ids):
            raise SchemaError(
                f"row values mention columns unknown to version {table.version} of {table.name!r}"
            )
        got: dict[int, Any] = dict.fromkeys(ids[n_notnull:])
        start = 0
        for i, end in zip(ids[:n_notnull], ends, strict=True):
            got[i] = _decode_datum(by_id[i], v[base + start : base + end])
            start = end
        rows.append({c.name: got.get(c.id, c.default) for c in cols})
    return rows


def _decode_datum(col: ColumnInfo, b: bytes) -> Any:
    k = col.kind
    width = _WIDTH[k]
    if width is not None and len(b) != width:
        raise RowFormatError(f"value of column {col.name!r} has {len(b)} bytes, not {width}")
    if k is Kind.STRING:
        try:
            return b.decode()
        except UnicodeDecodeError:
            raise RowFormatError(f"value of column {col.name!r} is not UTF-8") from None
    if k is Kind.INT:
        return struct.unpack("<q", b)[0]
    if k is Kind.DOUBLE:
        return struct.unpack("<d", b)[0]
    if k is Kind.BOOL:
        return b != b"\x00"
    if k is Kind.DATE:
        return _EPOCH + _dt.timedelta(days=struct.unpack("<i", b)[0])
    if k is Kind.TIMESTAMP:
        return _EPOCH_DT + _dt.timedelta(microseconds=struct.unpack("<q", b)[0])
    unscaled = int.from_bytes(b, "little", signed=True)
    return decimal.Decimal(unscaled).scaleb(-col.scale)


def decode_rows(
    table: TableInfo, values: Sequence[bytes], columns: Sequence[str] | None = None
) -> pa.RecordBatch:
    """Bulk-decode row values (one row each, same order) into a RecordBatch
    with the table's (or the named) columns. A value with a column id the
    schema does not know raises :class:`SchemaError`: decode with the schema
    that wrote it, or a newer one."""
    cols = None if columns is None else [table.column(n) for n in columns]
    if 0 < len(values) <= SMALL_DECODE:
        return _decode_small(table, values, cols if cols is not None else table.columns)
    batch, known = decode_rows_partial(table, values, cols)
    if len(known) != len(values):
        raise SchemaError(
            f"row values mention columns unknown to version {table.version} of {table.name!r}"
        )
    return batch


def decode_pylist(
    table: TableInfo, values: Sequence[bytes], columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """``decode_rows(...).to_pylist()`` (the same values, the same checks)
    without building Arrow arrays for the handful of rows a key lookup
    finds: the SQL layer's UPDATE and DELETE take rows this way."""
    cols = table.columns if columns is None else [table.column(n) for n in columns]
    if len(values) > SMALL_DECODE:
        rows: list[dict[str, Any]] = decode_rows(table, values, columns).to_pylist()
        return rows
    out = _decode_dicts(table, values, cols)
    for r in out:
        for c in cols:
            if r[c.name] is None and not c.nullable:
                raise RowFormatError(
                    f"row value does not fit the schema: NULL in NOT NULL column {c.name!r}"
                )
    return out


def decode_row(table: TableInfo, value: bytes) -> dict[str, Any]:
    """One row as ``{column name: value}`` (convenience; use :func:`decode_rows`
    for many)."""
    rows: list[dict[str, Any]] = decode_rows(table, [value]).to_pylist()
    return rows[0]


# ------------------------------------------------------------------ bulk encode
def _fixed_bytes(col: ColumnInfo, arr: pa.Array) -> np.ndarray:
    """(n, width) uint8 of a non-null fixed-width column, in the row format."""
    n = len(arr)
    k = col.kind
    if k is Kind.BOOL:
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.uint8).reshape(n, 1)
    width = {Kind.INT: 8, Kind.TIMESTAMP: 8, Kind.DOUBLE: 8, Kind.DATE: 4, Kind.DECIMAL: 16}[k]
    buf = arr.buffers()[1]
    assert buf is not None
    raw = np.frombuffer(buf, dtype=np.uint8)[arr.offset * width : (arr.offset + n) * width]
    # Arrow's little-endian layouts are the row format's: int64, float64,
    # int32 days, int128 unscaled decimals.
    return raw.reshape(n, width)


def _int_key_datums(col: ColumnInfo, arr: pa.Array) -> np.ndarray:
    """(n, 8) uint8 memcomparable datums of an integer-like key column."""
    k = col.kind
    if k is Kind.BOOL:
        ints = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    elif k is Kind.DATE:
        ints = np.asarray(arr.cast(pa.int32()).to_numpy(), dtype=np.int64)
    elif k is Kind.TIMESTAMP:
        ints = np.asarray(arr.cast(pa.int64()).to_numpy(), dtype=np.int64)
    else:
        ints = np.asarray(arr.to_numpy(), dtype=np.int64)
    flipped = ints.view(np.uint64) ^ np.uint64(_SIGN)
    return flipped.astype(">u8").view(np.uint8).reshape(len(ints), 8)


def check_rows(table: TableInfo, data: pa.Table) -> dict[str, pa.Array]:
    """Check ``data`` (the table's columns, by name, of the table's Arrow
    types) as the column types demand (INT range, NULL in NOT NULL, VARCHAR
    length, NaN in a key) without encoding it; returns the columns as single
    arrays. A bad value raises :class:`SchemaError`."""
    n = data.num_rows
    arrays: dict[str, pa.Array] = {}
    for c in sorted(table.columns, key=lambda c: c.id):
        if c.name not in data.column_names:
            raise SchemaError(f"data lacks column {c.name!r}")
        arr = data.column(c.name).combine_chunks()
        if arr.type != c.arrow_type:
            raise SchemaError(f"column {c.name!r} is {arr.type}, not {c.arrow_type}")
        if arr.null_count and not c.nullable:
            raise SchemaError(f"column {c.name!r} is NOT NULL")
        if c.type == "INT" and n:
            lo, hi = _INT_RANGE["INT"]
            mm = pc.min_max(arr).as_py()
            if mm["min"] is not None and (mm["min"] < lo or mm["max"] > hi):
                raise SchemaError(f"a value is out of range for INT column {c.name!r}")
        if c.kind is Kind.STRING and c.type != "TEXT":
            longest = pc.max(pc.utf8_length(arr)).as_py()
            if longest is not None and longest > c.precision:
                raise SchemaError(f"string of {longest} chars is too long for {c.type}")
        if c.kind is Kind.DOUBLE and c.name in table.primary_key and pc.any(pc.is_nan(arr)).as_py():
            raise SchemaError(f"NaN cannot be part of a key ({c.name!r})")
        arrays[c.name] = arr
    return arrays


def encode_rows(table: TableInfo, data: pa.Table) -> tuple[list[bytes], list[bytes]]:
    """``(handles, values)`` of every row of ``data`` (the table's columns,
    by name, already of the table's Arrow types), built with numpy over
    whole columns: the bulk twin of :meth:`TableInfo.encode_row`, byte for
    byte. Values are checked as the column types demand (INT range, NULL in
    NOT NULL, VARCHAR length); a bad value raises :class:`SchemaError`."""
    n = data.num_rows
    if n == 0:
        return [], []
    cols = sorted(table.columns, key=lambda c: c.id)
    arrays = check_rows(table, data)
    handles = _bulk_handles(table, arrays, n)
    values: list[bytes | None] = [None] * n
    # Rows sharing a NULL pattern share a header: encode each pattern at once.
    null_bits = np.zeros(n, dtype=np.int64)
    nullable = [c for c in cols if arrays[c.name].null_count]
    for i, c in enumerate(nullable):
        null_bits |= (
            np.asarray(arrays[c.name].is_null().to_numpy(zero_copy_only=False), dtype=np.int64) << i
        )
    patterns, inverse = _groups(null_bits)
    for g, pattern in enumerate(patterns):
        rows = np.nonzero(inverse == g)[0]
        nulls = {c.name for i, c in enumerate(nullable) if int(pattern) >> i & 1}
        take = None if len(patterns) == 1 else pa.array(rows)
        part = {
            c.name: (arrays[c.name] if take is None else arrays[c.name].take(take))
            for c in cols
            if c.name not in nulls
        }
        encoded = _encode_group(cols, part, [c.id for c in cols if c.name in nulls], len(rows))
        for r, v in zip(rows.tolist(), encoded, strict=True):
            values[r] = v
    return handles, values  # type: ignore[return-value]


def encode_index_entries(
    table: TableInfo, data: pa.Table, handles: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of every secondary index entry of every row of
    ``data`` (as :func:`encode_rows` takes it; ``handles`` from it): the bulk
    twin of :meth:`TableInfo.index_entries`, byte for byte. Integer-like
    columns without NULLs are encoded with numpy; the rest value by value."""
    n = data.num_rows
    out: list[tuple[bytes, bytes]] = []
    for idx in table.indexes:
        datums: list[list[bytes | None]] = []
        for name in idx.columns:
            col = table.column(name)
            arr = data.column(name).combine_chunks()
            int_like = (Kind.INT, Kind.DATE, Kind.TIMESTAMP, Kind.BOOL)
            if col.kind in int_like and arr.null_count == 0 and n:
                flat = np.ascontiguousarray(_int_key_datums(col, arr)).tobytes()
                datums.append([b"\x01" + flat[i : i + 8] for i in range(0, n * 8, 8)])
            else:
                datums.append(
                    [None if v is None else b"\x01" + col.key_datum(v) for v in arr.to_pylist()]
                )
        prefix = index_prefix(table.id, idx.id)
        for r, handle in enumerate(handles):
            vals = [d[r] for d in datums]
            key = prefix + b"".join(b"\x00" if v is None else v for v in vals)
            if idx.unique and None not in vals:
                out.append((key, handle))
            else:
                out.append((key + handle, b"0"))
    return out


def _bulk_handles(table: TableInfo, arrays: Mapping[str, pa.Array], n: int) -> list[bytes]:
    pks = table.pk_columns
    if all(c.kind in (Kind.INT, Kind.DATE, Kind.TIMESTAMP, Kind.BOOL) for c in pks):
        mat = np.concatenate([_int_key_datums(c, arrays[c.name]) for c in pks], axis=1)
        width = mat.shape[1]
        flat = np.ascontiguousarray(mat).tobytes()
        return [flat[i : i + width] for i in range(0, n * width, width)]
    # Strings, doubles, decimals in the key: the per-value encoder (exact).
    cols = [arrays[c.name].to_pylist() for c in pks]
    return [
        b"".join(c.key_datum(v) for c, v in zip(pks, vals, strict=True))
        for vals in zip(*cols, strict=True)
    ]


def _encode_group(
    cols: Sequence[ColumnInfo], part: Mapping[str, pa.Array], null_ids: Sequence[int], n: int
) -> list[bytes]:
    notnull = [c for c in cols if c.name in part]
    nn = len(notnull)
    head = struct.pack(
        f"<BBHH{nn + len(null_ids)}I",
        ROW_FORMAT_VERSION,
        0,
        nn,
        len(null_ids),
        *(c.id for c in notnull),
        *null_ids,
    )
    lengths = np.empty((n, nn), dtype=np.int64)
    pieces: list[pa.Array] = []
    for j, c in enumerate(notnull):
        arr = part[c.name]
        w = _WIDTH[c.kind]
        if w is None:
            offs = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
            lengths[:, j] = np.diff(offs)
            pieces.append(arr.cast(pa.binary()))
        else:
            lengths[:, j] = w
            pieces.append(_as_binary(np.ascontiguousarray(_fixed_bytes(c, arr))))
    ends = np.cumsum(lengths, axis=1).astype("<u4")
    # One C++ kernel concatenates header, offsets and values row by row.
    joined = pc.binary_join_element_wise(
        pa.scalar(head, pa.binary()),
        _as_binary(ends.view(np.uint8).reshape(n, 4 * nn)),
        *pieces,
        pa.scalar(b"", pa.binary()),
    )
    values: list[bytes] = joined.to_pylist()
    return values


def _as_binary(mat: np.ndarray) -> pa.Array:
    """A binary array whose i-th value is row i of a (n, w) uint8 matrix."""
    n, w = mat.shape
    fixed = pa.Array.from_buffers(pa.binary(w), n, [None, pa.py_buffer(mat.tobytes())])
    return fixed.cast(pa.binary())
