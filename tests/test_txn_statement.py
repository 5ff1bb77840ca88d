"""Transaction.statement() (statement atomicity) and commit checks: the two
hooks the SQL layer builds on."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

import kvstore
from kvstore.errors import InvalidArgumentError


def test_a_failed_statement_leaves_the_buffer_as_it_was(tmp_path: Path) -> None:
    with kvstore.open(str(tmp_path / "db")) as client:
        txn = client.begin()
        txn.put(b"a", b"1")
        with pytest.raises(RuntimeError), txn.statement():
            txn.put(b"a", b"2")
            txn.delete(b"b")
            txn.insert(b"c", b"3")
            txn.lock_keys(b"d")
            raise RuntimeError("statement fails")
        assert txn.written_keys == 1 and txn.get(b"a") == b"1"
        with txn.statement():
            txn.put(b"e", b"5")
        txn.commit()
        check = client.begin()
        assert check.get(b"a") == b"1" and check.get(b"e") == b"5" and check.get(b"c") is None
        with pytest.raises(InvalidArgumentError), check.statement(), check.statement():
            pass


def test_a_failing_commit_check_rolls_back_after_prewrite(tmp_path: Path) -> None:
    with kvstore.open(str(tmp_path / "db")) as client:
        txn = client.begin()
        txn.put(b"k", b"v")
        seen_locked: list[bool] = []

        def check() -> None:
            # Runs with every key prewritten: a reader at a later ts meets the lock.
            seen_locked.append(client.backend.kv_scan_lock(client.tso(), b"k", b"l", 10) != [])
            raise ValueError("schema moved")

        txn.add_commit_check(check)
        with pytest.raises(ValueError):
            txn.commit()
        assert seen_locked == [True]
        after = client.begin()
        assert after.get(b"k") is None
        assert client.backend.kv_scan_lock(client.tso(), b"", None, 10) == []


def test_a_prewrite_with_unknown_outcome_is_a_definite_abort(tmp_path: Path) -> None:
    """Before the primary's commit nothing is decided: a prewrite whose answer
    was lost aborts the transaction (retryable), and what it wrote is rolled
    back, never committed."""
    from kvstore.errors import TxnAbortedError, UndeterminedError

    with kvstore.open(str(tmp_path / "db")) as client:
        backend = client.backend
        real = backend.kv_prewrite
        calls: list[int] = []

        def lost_answer(*args: object, **kw: object) -> object:
            real(*args, **kw)  # applied on the store, but the answer is lost
            calls.append(1)
            raise UndeterminedError("kv_prewrite: outcome unknown")

        backend.kv_prewrite = lost_answer  # type: ignore[method-assign]
        txn = client.begin()
        txn.put(b"p", b"1")
        txn.put(b"q", b"2")
        with pytest.raises(TxnAbortedError):
            txn.commit()
        backend.kv_prewrite = real  # type: ignore[method-assign]
        assert calls
        after = client.begin()
        assert after.get(b"p") is None and after.get(b"q") is None
        assert client.backend.kv_scan_lock(client.tso(), b"", None, 10) == []
        # client.transaction runs the function again after such an abort.
        attempts: list[int] = []

        def body(t: kvstore.Transaction) -> None:
            attempts.append(1)
            t.put(b"r", b"3")
            if len(attempts) == 1:
                backend.kv_prewrite = lost_answer  # type: ignore[method-assign]
            else:
                backend.kv_prewrite = real  # type: ignore[method-assign]

        client.transaction(body)
        assert len(attempts) == 2 and client.begin().get(b"r") == b"3"


def test_point_reads_are_remembered_under_the_write_buffer(tmp_path: Path) -> None:
    """A transaction asks the store for a key once; its own writes (and a
    failed statement's taken-back writes) still show over what it remembers."""
    with kvstore.open(str(tmp_path / "db")) as client:
        with client.begin() as setup:
            setup.put(b"a", b"1")
            setup.put(b"b", b"2")
        asked: list[bytes] = []
        backend = client.backend
        real_get, real_batch = backend.kv_get, backend.kv_batch_get

        def kv_get(key: bytes, *a: object) -> object:
            asked.append(key)
            return real_get(key, *a)  # type: ignore[arg-type]

        def kv_batch_get(keys: list[bytes], *a: object) -> object:
            asked.extend(keys)
            return real_batch(keys, *a)  # type: ignore[arg-type]

        with (
            mock.patch.object(backend, "kv_get", kv_get),
            mock.patch.object(backend, "kv_batch_get", kv_batch_get),
        ):
            txn = client.begin()
            assert txn.batch_get([b"a", b"c"]) == {b"a": b"1"}
            with client.begin() as other:  # commits after txn's start_ts
                other.put(b"a", b"9")
                other.put(b"c", b"9")
            assert txn.get(b"a") == b"1" and txn.get(b"c") is None
            assert txn.batch_get([b"a", b"b", b"c"]) == {b"a": b"1", b"b": b"2"}
            assert sorted(asked) == [b"a", b"b", b"c"]  # each asked once
            txn.put(b"a", b"x")
            txn.delete(b"b")
            assert txn.get(b"a") == b"x" and txn.get(b"b") is None
            with pytest.raises(RuntimeError), txn.statement():
                txn.put(b"c", b"y")
                assert txn.batch_get([b"c"]) == {b"c": b"y"}
                raise RuntimeError("statement fails")
            assert txn.batch_get([b"a", b"b", b"c"]) == {b"a": b"x"}
            txn.lock_keys(b"c")
            assert txn.get(b"c") is None
            assert sorted(asked) == [b"a", b"b", b"c"]
            txn.rollback()
