"""``htapkv sql`` and ``htapkv load`` as a user runs them (subprocesses on an
embedded store directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

# Minutes, not seconds (a whole TPC-H load / fresh interpreters): the slow tier.
pytestmark = pytest.mark.slow


def htapkv(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def test_sql_script_prints_tables_and_timings(tmp_path: Path) -> None:
    d = str(tmp_path / "db")
    out = htapkv(
        "sql",
        "--data-dir",
        d,
        "-e",
        "CREATE TABLE t (id INT PRIMARY KEY, name TEXT); "
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'); "
        "SELECT name FROM t WHERE id = 2;",
    )
    assert out.returncode == 0, out.stderr
    assert "two" in out.stdout and "1 row(s)" in out.stdout and " ms)" in out.stdout
    assert "INSERT 2" in out.stdout
    plan = htapkv("sql", "--data-dir", d, "-e", "EXPLAIN SELECT name FROM t WHERE id = 2;")
    assert "[row (point get)]" in plan.stdout  # printed as data, not eaten as markup


def test_sql_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    d = str(tmp_path / "db")
    bad = htapkv("sql", "--data-dir", d, "-e", "SELEC 1;")
    assert bad.returncode == 1
    assert "ParseError" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr
    missing = htapkv("sql", "--data-dir", d, "-e", "SELECT * FROM nowhere;")
    assert missing.returncode == 1 and "UnknownTableError" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr


def test_sql_file_and_interactive_input(tmp_path: Path) -> None:
    d = str(tmp_path / "db")
    script = tmp_path / "s.sql"
    script.write_text(
        "-- a comment\nCREATE TABLE k (id INT PRIMARY KEY, v DOUBLE);\n"
        "INSERT INTO k VALUES (1, 1.5);\nINSERT INTO k VALUES (2, 2.5);\n"
    )
    assert htapkv("sql", "--data-dir", d, "-f", str(script)).returncode == 0
    out = htapkv("sql", "--data-dir", d, stdin="SELECT sum(v)\nFROM k;\nquit\n")
    assert out.returncode == 0, out.stderr
    assert "4.0" in out.stdout


def test_load_parquet_and_csv(tmp_path: Path) -> None:
    d = str(tmp_path / "db")
    assert (
        htapkv(
            "sql",
            "--data-dir",
            d,
            "-e",
            "CREATE TABLE m (id BIGINT PRIMARY KEY, city VARCHAR(10), temp DECIMAL(5,1), "
            "day DATE);",
        ).returncode
        == 0
    )
    data = pa.table(
        {
            "id": list(range(3000)),
            "city": [f"c{i % 7}" for i in range(3000)],
            "temp": [i / 10 for i in range(3000)],
            "day": pa.array([i % 365 for i in range(3000)], pa.int32()).cast(pa.date32()),
        }
    )
    pq.write_table(data.slice(0, 2000), tmp_path / "m.parquet")
    pacsv.write_csv(data.slice(2000), tmp_path / "m.csv")
    a = htapkv(
        "load", "--data-dir", d, "--table", "m", "--batch", "700", str(tmp_path / "m.parquet")
    )
    assert a.returncode == 0, a.stderr
    assert "loaded 2000 rows" in a.stdout
    b = htapkv("load", "--data-dir", d, "--table", "m", str(tmp_path / "m.csv"))
    assert b.returncode == 0, b.stderr
    out = htapkv("sql", "--data-dir", d, "-e", "SELECT count(*), sum(temp) FROM m;")
    assert "3000" in out.stdout and "449850.0" in out.stdout
    # Loading the same rows again breaks the primary key: a typed, one-line error.
    again = htapkv("load", "--data-dir", d, "--table", "m", str(tmp_path / "m.csv"))
    assert again.returncode == 2 and "duplicate" in again.stderr.lower()
    assert "Traceback" not in again.stderr
