"""Architecture rules (DESIGN.md §2, §7), enforced so they cannot rot.

* import contracts (``[tool.importlinter]`` in pyproject.toml): layer order,
  the client never imports server-side modules, pure layers never import
  grpc/pysyncobj, ``kvstore`` never imports ``sql``/``bench``, ``sql``
  reaches data only through the client library;
* pure modules read no wall clock and use no unseeded randomness;
* every package's ``__init__`` has a docstring saying what it is;
* ruff and mypy are clean.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["kvstore", "raft", "columnar", "sql", "bench"]

# Modules that must be deterministic functions of their inputs.
PURE = [
    "kvstore/codec.py",
    "kvstore/types.py",
    "kvstore/tablecodec.py",
    "columnar",
    "kvstore/mvcc",
    "kvstore/txn/actions.py",
    "kvstore/pd/cluster.py",  # PD's Raft state machine: every member applies alike
    "kvstore/pd/scheduler.py",
    "sql/planner.py",  # the same statement and schema always give the same plan
    "sql/values.py",
    "sql/prepared.py",
]
FORBIDDEN_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("os", "urandom"),
}
FORBIDDEN_IMPORTS = {"random", "secrets", "uuid"}


def _files(rel: str) -> list[Path]:
    p = ROOT / rel
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


def test_import_contracts() -> None:
    r = subprocess.run(
        [str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_read_no_clock_and_no_randomness(rel: str) -> None:
    for path in _files(rel):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
                assert not names & FORBIDDEN_IMPORTS, f"{path}: imports {names}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in FORBIDDEN_IMPORTS, f"{path}: {node.module}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                pair = (node.value.id, node.attr)
                assert pair not in FORBIDDEN_CALLS, f"{path}:{node.lineno} uses {pair}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_says_what_it_is(pkg: str) -> None:
    for init in (ROOT / pkg).rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init} needs a docstring: what, where, invariants"


def test_ruff_clean() -> None:
    r = subprocess.run(
        [str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
