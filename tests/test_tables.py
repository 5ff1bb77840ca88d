"""kvstore.client.tables: DDL and DML over an embedded store, scans of the row store."""

from __future__ import annotations

import pytest

import kvstore
from kvstore.client import tables
from kvstore.errors import (
    AlreadyExistsError,
    RowNotFoundError,
    SchemaError,
    TableExistsError,
    TableNotFoundError,
)


def test_create_insert_update_delete_scan() -> None:
    with kvstore.open(None) as client:
        t = tables.create_table(
            client, "users", [("id", "BIGINT"), ("name", "TEXT"), ("age", "INT", True, 18)], "id"
        )
        assert t.id == 1 and tables.get_table(client, "users") == t
        u = tables.create_table(client, "pairs", [("a", "TEXT"), ("b", "INT")], ["a", "b"])
        assert u.id == 2
        with pytest.raises(TableExistsError):
            tables.create_table(client, "users", [("id", "BIGINT")], "id")
        with pytest.raises(TableNotFoundError):
            tables.get_table(client, "nope")
        with pytest.raises(SchemaError):
            tables.create_table(client, "bad", [("id", "NOPE")], "id")

        with client.begin() as txn:
            tables.insert(txn, t, [{"id": i, "name": f"u{i}"} for i in (3, 1, 2)])
            tables.insert(txn, u, [{"a": "x", "b": 2}, {"a": "x", "b": 1}])
        txn = client.begin()
        assert tables.scan_rows(txn, t).to_pylist() == [
            {"id": i, "name": f"u{i}", "age": 18} for i in (1, 2, 3)
        ]
        assert tables.scan_rows(txn, u, ["b"]).to_pylist() == [{"b": 1}, {"b": 2}]
        txn.rollback()

        txn = client.begin()
        tables.insert(txn, t, [{"id": 1, "name": "dup"}])
        with pytest.raises(AlreadyExistsError):
            txn.commit()
        with client.begin() as txn, pytest.raises(SchemaError):
            tables.insert(txn, t, [{"id": 5}, {"id": 5}])

        with client.begin() as txn:
            tables.update(txn, t, [{"id": 2, "age": 40}])
            tables.delete(txn, t, [3, 99])
            with pytest.raises(RowNotFoundError):
                tables.update(txn, t, [{"id": 3, "age": 1}])  # deleted in this txn
            # The transaction's own writes are part of its scan.
            assert [r["id"] for r in tables.scan_rows(txn, t).to_pylist()] == [1, 2]
        t2 = tables.add_column(client, "users", ("email", "TEXT"))
        assert t2.version == 2 and tables.get_table(client, "users") == t2
        txn = client.begin()
        assert tables.scan_rows(txn, t2).to_pylist() == [
            {"id": 1, "name": "u1", "age": 18, "email": None},
            {"id": 2, "name": "u2", "age": 40, "email": None},
        ]


def test_delete_then_insert_in_one_transaction_replaces_the_row() -> None:
    with kvstore.open(None) as client:
        t = tables.create_table(client, "t", [("id", "BIGINT"), ("v", "INT")], "id")
        with client.begin() as txn:
            tables.insert(txn, t, [{"id": 1, "v": 1}])
        with client.begin() as txn:  # DELETE then INSERT of the same key, as in SQL
            tables.delete(txn, t, [1])
            tables.insert(txn, t, [{"id": 1, "v": 2}])
        with client.begin() as txn:
            assert tables.scan_rows(txn, t).to_pylist() == [{"id": 1, "v": 2}]
        txn = client.begin()
        tables.insert(txn, t, [{"id": 1, "v": 3}])  # no delete first: taken
        with pytest.raises(AlreadyExistsError):
            txn.commit()
