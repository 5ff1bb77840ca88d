"""Generate the protobuf/gRPC modules of :mod:`kvstore.proto` from ``proto/htapkv``.

Run on import of :mod:`kvstore.proto` (cheap when nothing changed: one hash of
the ``.proto`` sources compared with a stamp file) and by hand with
``python -m kvstore.proto [--force]``.

Steps: ``grpc_tools.protoc`` writes ``htapkv/X_pb2.py``, ``X_pb2.pyi`` and
``X_pb2_grpc.py`` into a scratch directory next to the package; their
``from htapkv import X_pb2`` imports (and the module names recorded in the
message classes) are rewritten to ``kvstore.proto.X_pb2``; the files are
renamed into place one by one (atomic), and the stamp is written last. An
exclusive ``flock`` serialises concurrent generators (parallel test
processes); whoever gets the lock second finds the stamp current and does
nothing.

The descriptors keep their package-path names (``htapkv/kvrpcpb.proto``,
messages ``htapkv.kvrpcpb.*``): only the Python module path changes, so the
wire format and the names other languages see are untouched, and nothing
collides in protobuf's global descriptor pool.

Standard library only (grpc_tools is imported when generation is needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent.parent / "proto"  # the repository's proto/
PROTO_PACKAGE = "htapkv"  # directory (and protobuf package prefix) of our .proto files
PYTHON_PACKAGE = "kvstore.proto"
STAMP = PACKAGE_DIR / "_generated.stamp"
LOCK = PACKAGE_DIR / ".codegen.lock"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# Bump when the rewriting below changes, so existing outputs are regenerated.
CODEGEN_VERSION = "1"

_IMPORT_RE = re.compile(rf"^from {PROTO_PACKAGE} import (\w+_pb2)\b", re.MULTILINE)
_MODULE_NAME_RE = re.compile(rf"(['\"]){PROTO_PACKAGE}\.(\w+_pb2)\1")


class CodegenError(ImportError):
    """The generated modules are missing or stale and cannot be (re)built."""


def proto_sources() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def _tools_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return "missing"


def _digest(sources: list[Path]) -> str:
    h = hashlib.sha256(f"{CODEGEN_VERSION}\0{_tools_version()}\0".encode())
    for p in sources:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _outputs(sources: list[Path]) -> list[Path]:
    return [PACKAGE_DIR / (p.stem + s) for p in sources for s in SUFFIXES]


def _is_current(sources: list[Path], digest: str) -> bool:
    try:
        stamp = STAMP.read_text().strip()
    except FileNotFoundError:
        return False
    return stamp == digest and all(p.exists() for p in _outputs(sources))


def rewrite(text: str) -> str:
    """Turn protoc's ``htapkv``-rooted module paths into ``kvstore.proto`` ones."""
    text = _IMPORT_RE.sub(rf"from {PYTHON_PACKAGE} import \1", text)
    return _MODULE_NAME_RE.sub(rf"\g<1>{PYTHON_PACKAGE}.\2\g<1>", text)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _generate(sources: list[Path], digest: str) -> None:
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = str(files("grpc_tools") / "_proto")
    scratch = Path(tempfile.mkdtemp(prefix=".codegen-", dir=PACKAGE_DIR))
    try:
        rel = [str(p.relative_to(PROTO_ROOT)) for p in sources]
        # Absolute paths inside the -I root: protoc names each file by its
        # path relative to that root ("htapkv/kvrpcpb.proto").
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(p) for p in sources),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise CodegenError(f"protoc failed (exit {rc}) on {', '.join(rel)}")
        wanted = {p.name for p in _outputs(sources)}
        for out in sorted((scratch / PROTO_PACKAGE).iterdir()):
            if out.name in wanted:
                out.write_text(rewrite(out.read_text()))
                os.replace(out, PACKAGE_DIR / out.name)
        # Outputs of .proto files that no longer exist would shadow nothing
        # but confuse readers: remove them.
        for old in PACKAGE_DIR.iterdir():
            if old.name.endswith(SUFFIXES) and old.name not in wanted:
                old.unlink()
        tmp_stamp = scratch / "stamp"
        tmp_stamp.write_text(digest + "\n")
        os.replace(tmp_stamp, STAMP)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_generated(force: bool = False) -> bool:
    """Make the generated modules match the ``.proto`` sources. Returns True
    if it generated them. Without sources (an installed copy of the package)
    the shipped modules are used as they are."""
    sources = proto_sources()
    if not sources:
        if all((PACKAGE_DIR / f"{n}_pb2.py").exists() for n in ("kvrpcpb", "tikvpb")):
            return False
        raise CodegenError(f"no .proto sources in {PROTO_ROOT} and no generated modules")
    if _tools_version() == "missing":
        # Cannot regenerate: use what is there, if anything.
        if all(p.exists() for p in _outputs(sources)):
            return False
        raise CodegenError("grpcio-tools is needed to generate the protobuf modules")
    digest = _digest(sources)
    if not force and _is_current(sources, digest):
        return False
    try:
        with _locked():
            if not force and _is_current(sources, digest):
                return False  # another process generated them while we waited
            _generate(sources, digest)
    except OSError as e:
        raise CodegenError(f"cannot generate the protobuf modules in {PACKAGE_DIR}: {e}") from e
    return True
