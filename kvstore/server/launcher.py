"""Start a store server as a child process and know when it serves.

:class:`StoreProcess` runs ``python -m kvstore.server.kv_service`` with
``--addr HOST:0 --port-file F``, waits until the child has bound its port and
written it to ``F`` (or died, or a deadline passed), and stops it on
:meth:`~StoreProcess.stop` / leaving the ``with`` block: SIGTERM, then SIGKILL
if it does not exit in time. Used by tests and benchmarks; a cluster harness
can use it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


class StoreProcess:
    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        startup_timeout: float = 30.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="htapkv-store-")
        scratch = Path(self._scratch.name)
        self.port_file = scratch / "port"
        self.log_path = Path(log_path) if log_path else scratch / "server.log"
        args = [sys.executable, "-m", "kvstore.server.kv_service"]
        args += ["--data-dir", str(data_dir)] if data_dir is not None else ["--memory"]
        args += ["--addr", f"{host}:0", "--port-file", str(self.port_file)]
        args += extra_args or []
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.port = self._wait_for_port(startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.address = f"{host}:{self.port}"

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            if self.port_file.exists():  # written whole, then renamed
                return int(self.port_file.read_text())
            if self.proc.poll() is not None:
                raise RuntimeError(f"store exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"store did not start in {timeout} s: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate (then kill) the child; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._scratch.cleanup()
        return self.proc.returncode

    def __enter__(self) -> StoreProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["StoreProcess"]
