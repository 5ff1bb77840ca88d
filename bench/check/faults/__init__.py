"""Process-level faults for the nemesis: what they need and how they are built.

* **clock**: libfaketime (Debian ``libfaketime``) preloaded into one server
  process, with ``FAKETIME`` set to an offset (``"+30s"``) or a drift
  (``"+0 x1.5"``), plus our ``sleepfix.c`` preloaded before it.
  ``FAKETIME_DONT_FAKE_MONOTONIC=1``: only the wall clock (``time.time()``,
  ``CLOCK_REALTIME``) is wrong; ``time.monotonic()`` stays true. Measured with
  libfaketime 0.9.10 and Python 3.11: faking the monotonic clock too makes
  every timed wait on a lock or event overshoot by the offset (``-30s``: a
  0.5 s ``Event.wait`` takes 30 s), so Raft, gRPC and the store stall, and
  with a drift ``time.sleep`` fails with ``EINVAL``. With the monotonic clock
  left alone ``time.sleep`` still fails with ``EINVAL`` (libfaketime's
  ``clock_nanosleep`` wrapper), which ``sleepfix.c`` repairs. What the fault
  therefore models: a node whose wall clock was stepped or drifts (bad NTP,
  a VM resumed), not one whose timers run at another rate; with a drift,
  libfaketime also scales ``poll``/``select`` timeouts, so that process's I/O
  waits end early.
* **disk**: ``failfsync.c`` preloaded into a store: while a trigger file
  exists, ``fsync``/``fdatasync``/``syncfs``/``sync_file_range`` fail with
  ``EIO`` and each failure is logged to a file of the nemesis.
* **power loss**: :mod:`bench.check.faults.powerloss`, a FUSE filesystem
  (libfuse 3 through ``mfusepy``, in a server process of its own) under the
  stores' data directories; it keeps unsynced file data in memory and drops
  it on demand, for one store's directory at a time.

Shims are compiled at run time (``cc -shared -fPIC``) into the run's
temporary directory; without a C compiler or libfaketime the fault is
unavailable and the reason says what to install.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
)


def libfaketime() -> str | None:
    """Path of libfaketime's (single-threaded-clock) preload library."""
    for pattern in LIBFAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def clock_unavailable_reason() -> str | None:
    if libfaketime() is None:
        return "clock skew needs libfaketime (Debian: apt-get install libfaketime)"
    if compiler() is None:
        return "clock skew needs a C compiler for its sleep shim (Debian: apt-get install gcc)"
    return None


def disk_unavailable_reason() -> str | None:
    if compiler() is None:
        return "disk faults need a C compiler for the fsync shim (Debian: apt-get install gcc)"
    return None


def build_shim(name: str, out_dir: Path) -> Path:
    """Compile ``HERE/<name>.c`` into ``out_dir/<name>.so`` (once per dir)."""
    out = Path(out_dir) / f"{name}.so"
    if not out.exists():
        cc = compiler()
        if cc is None:
            raise FileNotFoundError("no C compiler (cc or gcc) on PATH")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".so.tmp")
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(HERE / f"{name}.c"), "-ldl"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr}")
        tmp.replace(out)
    return out


def clock_env(spec: str, shim_dir: Path) -> dict[str, str]:
    """Environment that starts a process with its wall clock at ``spec``
    (libfaketime syntax: ``"+30s"``, ``"-30s"``, ``"+0 x1.5"``)."""
    lib = libfaketime()
    if lib is None:
        raise FileNotFoundError("libfaketime not found")
    fix = build_shim("sleepfix", shim_dir)
    return {
        "LD_PRELOAD": f"{fix}:{lib}",
        "FAKETIME": spec,
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "DONT_FAKE_MONOTONIC": "1",  # libfaketime before 0.9.8
    }


def disk_env(trigger: Path, log: Path, shim_dir: Path) -> dict[str, str]:
    """Environment that starts a process whose fsyncs fail while ``trigger``
    exists; every injected failure is appended to ``log``."""
    shim = build_shim("failfsync", shim_dir)
    return {
        "LD_PRELOAD": str(shim),
        "HTAPKV_FAILFSYNC_TRIGGER": str(trigger),
        "HTAPKV_FAILFSYNC_LOG": str(log),
    }


__all__ = [
    "build_shim",
    "clock_env",
    "clock_unavailable_reason",
    "compiler",
    "disk_env",
    "disk_unavailable_reason",
    "libfaketime",
]
