"""A FUSE filesystem that loses power: unsynced file data is dropped on demand.

What it is for: proving that whatever a process *acknowledged* survives a
power loss, which kill -9 alone cannot show (after kill -9 the kernel still
holds every ``write()`` the process made; only a power loss drops what was
never fsync'd). DESIGN.md §6. Used by the ``disk`` nemesis of ``htapkv
check`` (one store loses power: :meth:`PowerLossFS.power_loss` with that
store's directory) and by ``tests/test_power_loss.py`` (every store at once).

The model (POSIX's minimum guarantee, no more):

* **Data is durable only once synced.** The bytes and the size of a file
  change in memory only; ``fsync``/``fdatasync`` of *that* file (on any open
  handle of it, or a write through a handle opened ``O_SYNC``/``O_DSYNC``)
  makes its current contents durable. A truncation (``truncate``,
  ``ftruncate``, ``open(O_TRUNC)``) and ``fallocate`` that grows the file are
  data too. :meth:`PowerLossOps.power_loss` drops every unsynced change
  (of the whole filesystem, or of the files under one directory: one
  machine's disk among several on the mount): each file reverts to its
  contents as of its last sync.
* **Metadata is durable at once**: create, mkdir, rmdir, unlink, rename,
  link, symlink, chmod/chown, utimens take effect on the backing directory
  immediately and survive a power loss (``fsyncdir`` is therefore a no-op).
  So a file created (or renamed into place) and never synced keeps its name
  after a power loss, with its unsynced data gone: a new file comes back
  empty, and ``write tmp; rename tmp -> f`` without an fsync of ``tmp`` leaves
  ``f`` empty (POSIX allows it, and real filesystems that order no data
  before metadata do it).
* Unsynced data is tracked per file (per inode of the backing directory, so it
  follows renames and hard links), in 4 KiB blocks. Syncing writes the file's
  dirty blocks into the backing file; nothing is lost *between* syncs except by
  :meth:`power_loss`. The backing directory plays the disk: it is never
  fsync'd itself (it does not lose power).
* No torn or reordered writes *within* a file's unsynced data: a power loss
  drops all of it (the harshest outcome for recent writes, not the only one a
  real disk can produce; partially persisted unsynced data is not modelled).

The mount uses ``direct_io`` and zero attribute/entry timeouts, so the kernel
caches neither pages nor sizes: after a power loss every process sees the
reverted files at once. (``mmap`` of files on the mount is therefore not
supported; RocksDB does not use it by default.)

The filesystem runs in its own process (``python .../powerloss.py serve
BACKING MOUNT SOCKET``: the file is run as a script, so the server loads
nothing of htapkv), controlled over a Unix socket, so that a hung FUSE
call can be cut by killing that process (the kernel then fails every pending
request with ``ENOTCONN``). :class:`PowerLossFS` starts it, waits for the
mount, sends :meth:`PowerLossFS.power_loss`, and always unmounts in
:meth:`PowerLossFS.close` (lazily if busy, killing the server if it hangs).
Accesses to the mount from the test process itself go through
:meth:`PowerLossFS.run`, which gives up (and kills the server) after a
deadline instead of hanging.

Needs libfuse 3 (Debian: ``libfuse3-3``; ``fuse3`` adds ``fusermount3``) and
the ``mfusepy`` package (ctypes bindings), and the right to mount FUSE (root,
or ``/dev/fuse`` access plus ``fusermount3``): :func:`fuse_unavailable_reason`
checks the kernel side (tests fail rather than skip without the library),
:func:`unavailable_reason` everything (the nemesis leaves the fault out).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BLOCK = 4096
MOUNT_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
FALLOC_FL_KEEP_SIZE = 1

# ---------------------------------------------------------------------------
# The filesystem (runs in the server process)
# ---------------------------------------------------------------------------


class _Node:
    """The unsynced state of one file (one backing inode).

    ``size`` is the file's size now. Backing bytes ``[0, base)`` are still
    visible (a truncation since the last sync hides the rest); ``blocks`` holds
    every block written since the last sync, whole (bytes past ``size`` are
    zero)."""

    __slots__ = ("base", "blocks", "size")

    def __init__(self, backing_size: int) -> None:
        self.size = backing_size
        self.base = backing_size
        self.blocks: dict[int, bytearray] = {}

    def dirty_bytes(self) -> int:
        return len(self.blocks) * BLOCK


def _make_ops_class() -> type:
    # mfusepy is imported lazily: the parent process (the nemesis, a test)
    # never loads libfuse, and a missing library surfaces as the server's
    # start-up error.
    import mfusepy

    class PowerLossOps(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, backing: str) -> None:
            self.root = os.path.realpath(backing)
            self._mu = threading.RLock()
            self.nodes: dict[int, _Node] = {}  # backing inode -> unsynced state
            self.handles: dict[int, tuple[int, int]] = {}  # fh (backing fd) -> (ino, flags)
            self.opens: dict[int, int] = {}  # backing inode -> open handles
            self.counters = {"syncs": 0, "power_losses": 0, "writes": 0}

        # ---------------------------------------------------------- helpers
        def _p(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _fd_ino(self, fh: int) -> tuple[int, int]:
            try:
                ino, flags = self.handles[fh]
            except KeyError:
                raise mfusepy.FuseOSError(errno.EBADF) from None
            return ino, flags

        def _node(self, ino: int, fd: int) -> _Node:
            node = self.nodes.get(ino)
            if node is None:
                node = self.nodes[ino] = _Node(os.fstat(fd).st_size)
            return node

        def _load(self, node: _Node, fd: int, i: int) -> bytearray:
            blk = node.blocks.get(i)
            if blk is None:
                blk = bytearray(BLOCK)
                start = i * BLOCK
                n = min(BLOCK, node.base - start)
                if n > 0:
                    data = os.pread(fd, n, start)
                    blk[: len(data)] = data
                node.blocks[i] = blk
            return blk

        def _truncate_node(self, node: _Node, fd: int, length: int) -> None:
            if length < node.size:
                node.base = min(node.base, length)
                for i in [i for i in node.blocks if i * BLOCK >= length]:
                    del node.blocks[i]
                i, off = divmod(length, BLOCK)
                blk = node.blocks.get(i)
                if blk is not None and off:
                    blk[off:] = bytes(BLOCK - off)
            node.size = length

        def _sync(self, ino: int, fd: int) -> None:
            node = self.nodes.pop(ino, None)
            self.counters["syncs"] += 1
            if node is None:
                return
            if os.fstat(fd).st_size > node.base:
                os.ftruncate(fd, node.base)
            for i in sorted(node.blocks):
                n = min(BLOCK, node.size - i * BLOCK)
                if n > 0:
                    os.pwrite(fd, bytes(node.blocks[i][:n]), i * BLOCK)
            os.ftruncate(fd, node.size)

        def _forget_if_gone(self, ino: int, nlink: int) -> None:
            # The last name of a file went away: its unsynced data can never
            # be reached again unless a handle still holds it open.
            if nlink == 0 and not self.opens.get(ino):
                self.nodes.pop(ino, None)

        def _open_backing(self, path: str, flags: int, mode: int | None = None) -> int:
            # Data reaches the backing file only in _sync (pwrite at explicit
            # offsets), so: read-write always (block fill and sync need both),
            # never O_APPEND (pwrite would append), never O_TRUNC (a
            # truncation is data, applied to the node), no O_DIRECT.
            strip = os.O_APPEND | os.O_TRUNC | os.O_ACCMODE | getattr(os, "O_DIRECT", 0)
            bflags = (flags & ~strip) | os.O_RDWR
            if mode is None:
                return os.open(self._p(path), bflags)
            return os.open(self._p(path), bflags, mode)

        def _register(self, fd: int, flags: int) -> int:
            ino = os.fstat(fd).st_ino
            self.handles[fd] = (ino, flags)
            self.opens[ino] = self.opens.get(ino, 0) + 1
            if flags & os.O_TRUNC and (ino in self.nodes or os.fstat(fd).st_size):
                self._truncate_node(self._node(ino, fd), fd, 0)
            return fd

        @staticmethod
        def _stat_dict(st: os.stat_result) -> dict[str, Any]:
            return {
                "st_mode": st.st_mode,
                "st_ino": st.st_ino,
                "st_nlink": st.st_nlink,
                "st_uid": st.st_uid,
                "st_gid": st.st_gid,
                "st_size": st.st_size,
                "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }

        # ---------------------------------------------------------- control
        def _inodes_under(self, subdir: str) -> dict[int, str]:
            """Backing inode -> path (relative to the mount) of every file
            named under ``subdir``. Names are durable at once, so the backing
            tree is the current one; an unlinked file still open is not
            found, and its data is unreachable after the process is gone."""
            top = os.path.realpath(self._p(subdir))
            if os.path.commonpath([top, self.root]) != self.root:
                raise ValueError(f"{subdir!r} is outside the filesystem")
            out = {}
            for dirpath, _dirs, names in os.walk(top):
                for name in names:
                    path = os.path.join(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.lstat(path)
                        if stat.S_ISREG(st.st_mode):
                            out[st.st_ino] = os.path.relpath(path, self.root)
            return out

        def dirty(self, subdir: str = "") -> dict[str, int]:
            """Unsynced bytes (whole 4 KiB blocks) per file (path relative to
            the mount), of the files under ``subdir`` (everything: ``""``)."""
            with self._mu:
                named = self._inodes_under(subdir)
                return {
                    named.get(ino, f"(unlinked inode {ino})"): node.dirty_bytes()
                    for ino, node in self.nodes.items()
                    if not subdir or ino in named
                }

        def power_loss(self, subdir: str = "") -> dict[str, Any]:
            """Drop the unsynced data of every file, or of the files under
            ``subdir``; report what went (``files``: bytes per path)."""
            with self._mu:
                lost = self.dirty(subdir)
                if subdir:
                    named = self._inodes_under(subdir)
                    for ino in [i for i in self.nodes if i in named]:
                        del self.nodes[ino]
                else:
                    self.nodes.clear()
                self.counters["power_losses"] += 1
                return {
                    "files": len(lost),
                    "dirty_bytes_dropped": sum(lost.values()),
                    "dropped": dict(sorted(lost.items())),
                }

        def stats(self) -> dict[str, int]:
            with self._mu:
                return {
                    **self.counters,
                    "dirty_files": len(self.nodes),
                    "dirty_bytes": sum(n.dirty_bytes() for n in self.nodes.values()),
                    "open_handles": len(self.handles),
                }

        # ---------------------------------------------------------- metadata
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            with self._mu:
                st = os.fstat(fh) if fh is not None and fh in self.handles else None
                if st is None:
                    st = os.lstat(self._p(path))
                d = self._stat_dict(st)
                node = self.nodes.get(st.st_ino) if stat.S_ISREG(st.st_mode) else None
                if node is not None:
                    d["st_size"] = node.size
                    d["st_blocks"] = (node.size + 511) // 512
                return d

        def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
            # With use_ino the kernel takes each entry's inode from here, and a
            # zero one hides the entry: give the real mode and inode.
            out = []
            for name in [".", "..", *os.listdir(self._p(path))]:
                st = os.lstat(os.path.join(self._p(path), name))
                out.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
            return out

        def readlink(self, path: str) -> str:
            return os.readlink(self._p(path))

        def mknod(self, path: str, mode: int, dev: int) -> int:
            os.mknod(self._p(path), mode, dev)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._p(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._p(path))
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._p(target))
            return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._p(source), self._p(target))
            return 0

        def unlink(self, path: str) -> int:
            with self._mu:
                st = os.lstat(self._p(path))
                os.unlink(self._p(path))
                self._forget_if_gone(st.st_ino, st.st_nlink - 1)
            return 0

        def rename(self, old: str, new: str) -> int:
            with self._mu:
                try:
                    replaced: os.stat_result | None = os.lstat(self._p(new))
                except FileNotFoundError:
                    replaced = None
                src = os.lstat(self._p(old))
                os.rename(self._p(old), self._p(new))
                if (
                    replaced is not None
                    and replaced.st_ino != src.st_ino
                    and not stat.S_ISDIR(replaced.st_mode)
                ):
                    self._forget_if_gone(replaced.st_ino, replaced.st_nlink - 1)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._p(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.lchown(self._p(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._p(path), follow_symlinks=False)
            else:
                os.utime(self._p(path), ns=times, follow_symlinks=False)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._p(path))
            keys = "f_bavail f_bfree f_blocks f_bsize f_favail f_ffree f_files f_flag f_frsize"
            keys += " f_namemax"
            return {k: getattr(sv, k) for k in keys.split()}

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._p(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        # ---------------------------------------------------------- data
        def open(self, path: str, flags: int) -> int:
            with self._mu:
                return self._register(self._open_backing(path, flags), flags)

        def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
            with self._mu:
                fd = self._open_backing(path, flags | os.O_CREAT, mode)
                return self._register(fd, flags)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self._mu:
                ino, _ = self._fd_ino(fh)
                node = self.nodes.get(ino)
                if node is None:
                    return os.pread(fh, size, offset)
                end = min(offset + size, node.size)
                out = bytearray()
                pos = offset
                while pos < end:
                    i, off = divmod(pos, BLOCK)
                    n = min(BLOCK - off, end - pos)
                    blk = node.blocks.get(i)
                    if blk is not None:
                        out += blk[off : off + n]
                    else:
                        vis = max(0, min(n, node.base - pos))
                        data = os.pread(fh, vis, pos) if vis else b""
                        out += data + bytes(n - len(data))
                    pos += n
                return bytes(out)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self._mu:
                ino, flags = self._fd_ino(fh)
                node = self._node(ino, fh)
                pos, view = offset, memoryview(data)
                while view:
                    i, off = divmod(pos, BLOCK)
                    n = min(BLOCK - off, len(view))
                    self._load(node, fh, i)[off : off + n] = view[:n]
                    pos += n
                    view = view[n:]
                node.size = max(node.size, offset + len(data))
                self.counters["writes"] += 1
                if flags & (os.O_SYNC | os.O_DSYNC):
                    self._sync(ino, fh)
                return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self._mu:
                if fh is not None and fh in self.handles:
                    ino, _ = self.handles[fh]
                    self._truncate_node(self._node(ino, fh), fh, length)
                    return 0
                fd = os.open(self._p(path), os.O_RDWR)
                try:
                    ino = os.fstat(fd).st_ino
                    self._truncate_node(self._node(ino, fd), fd, length)
                finally:
                    os.close(fd)
                return 0

        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            with self._mu:
                ino, _ = self._fd_ino(fh)
                if mode == FALLOC_FL_KEEP_SIZE:
                    return 0  # preallocation only: nothing visible changes
                if mode != 0:
                    raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
                node = self._node(ino, fh)
                node.size = max(node.size, offset + size)
                return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            with self._mu:
                ino, _ = self._fd_ino(fh)
                self._sync(ino, fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0  # metadata is durable at once

        def flush(self, path: str, fh: int) -> int:
            return 0  # close() syncs nothing

        def release(self, path: str, fh: int) -> int:
            with self._mu:
                ino, _ = self.handles.pop(fh, (None, 0))
                try:
                    nlink = os.fstat(fh).st_nlink
                finally:
                    os.close(fh)
                if ino is not None:
                    left = self.opens.get(ino, 1) - 1
                    if left:
                        self.opens[ino] = left
                    else:
                        self.opens.pop(ino, None)
                    self._forget_if_gone(ino, nlink)
            return 0

    return PowerLossOps


def _serve_control(ops: Any, sock_path: str) -> None:
    """Answer one JSON line per request on the control socket."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    # The client waits for the socket file to appear, then connects: bind and
    # listen under another name first, so the file appears already listening
    # (bind alone creates it, and a connect before listen() is refused).
    staging = sock_path + ".new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    srv.bind(staging)
    srv.listen(8)
    os.replace(staging, sock_path)

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                # A request is a JSON list: [command, *arguments].
                cmd, *args = json.loads(line)
                try:
                    if cmd == "power_loss":
                        out: dict[str, Any] = ops.power_loss(*args)
                    elif cmd == "dirty":
                        out = {"dirty": ops.dirty(*args)}
                    elif cmd == "stats":
                        out = ops.stats()
                    elif cmd == "ping":
                        out = {"ok": 1}
                    else:
                        out = {"error": f"unknown command {cmd!r}"}
                except (OSError, ValueError, TypeError) as e:
                    out = {"error": f"{cmd}: {type(e).__name__}: {e}"}
                f.write(json.dumps(out).encode() + b"\n")
                f.flush()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve(backing: str, mount: str, sock_path: str) -> None:
    """Server process: mount ``backing`` at ``mount`` until unmounted."""
    import mfusepy

    ops = _make_ops_class()(backing)
    threading.Thread(target=_serve_control, args=(ops, sock_path), daemon=True).start()
    mfusepy.FUSE(
        ops,
        mount,
        foreground=True,
        fsname="powerlossfs",
        direct_io=True,  # no page cache: a power loss is seen at once
        hard_remove=True,  # no .fuse_hidden files for unlinked open files
        use_ino=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


# ---------------------------------------------------------------------------
# The parent side
# ---------------------------------------------------------------------------


def fuse_unavailable_reason() -> str | None:
    """Why FUSE cannot be mounted on this machine at all, or None. Only the
    kernel side counts: a missing library or package is a setup error, to be
    reported by :class:`PowerLossFS` failing, not a reason to skip."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: this kernel or container offers no FUSE"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"cannot open /dev/fuse ({e.strerror}): FUSE is not usable here"
    os.close(fd)
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3: cannot mount FUSE"
    return None


def unavailable_reason() -> str | None:
    """Why a :class:`PowerLossFS` cannot run here (kernel, library or
    package), or None when it can."""
    if why := fuse_unavailable_reason():
        return why
    if ctypes.util.find_library("fuse3") is None:
        return "power loss needs libfuse 3 (Debian: apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "power loss needs the mfusepy package (pip install mfusepy)"
    return None


def _mounted(mount: str) -> bool:
    # Read the mount table rather than stat the mount point: a stat would go
    # to the FUSE server, which is what may be hung.
    target = os.path.realpath(mount)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                return True
    return False


class PowerLossFS:
    """Mount a :class:`PowerLossOps` filesystem over ``root/disk`` at
    ``root/mnt``, served by a child process. Use as a context manager."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.backing = self.root / "disk"
        self.mount = self.root / "mnt"
        # A Unix socket path must stay under ~108 bytes: not under tmp_path.
        self._sock_dir = tempfile.mkdtemp(prefix="plfs-")
        self.sock_path = os.path.join(self._sock_dir, "ctl.sock")
        self.log_path = self.root / "powerloss.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> PowerLossFS:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        sock = [self.sock_path]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "serve", str(self.backing), str(self.mount), *sock],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT_S
            while not (_mounted(str(self.mount)) and os.path.exists(self.sock_path)):
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the FUSE server exited with {self.proc.returncode} before mounting "
                        f"(needs libfuse3: apt-get install fuse3; and pip mfusepy):\n"
                        + self.log_tail()
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"FUSE mount did not appear: {self.log_tail()}")
                time.sleep(0.01)
            self._call("ping")
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> PowerLossFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Unmount and stop the server, whatever state it is in."""
        mount = str(self.mount)
        try:
            if _mounted(mount) and not self._unmount([]):
                # Busy (an open file of a process we could not stop) or hung:
                # detach it now; the kernel finishes when the last user goes.
                self._unmount(["-z"])
        finally:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()  # aborts the FUSE connection: pending calls fail
                    proc.wait(timeout=10)
            if _mounted(mount):  # the server died before unmounting
                self._unmount(["-z"])
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def _unmount(self, extra: list[str]) -> bool:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is not None:
            args = [tool, "-u", *extra, str(self.mount)]
        else:
            args = ["umount", *(["-l"] if extra else []), str(self.mount)]
        try:
            r = subprocess.run(args, capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def kill_server(self) -> None:
        """Cut the FUSE connection (every pending and later call fails)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # ------------------------------------------------------------ control
    def _call(self, cmd: str, *args: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CALL_TIMEOUT_S)
            s.connect(self.sock_path)
            s.sendall(json.dumps([cmd, *args]).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"FUSE server closed the control socket: {cmd}")
                buf += chunk
        out: dict[str, Any] = json.loads(buf)
        if "error" in out:
            raise RuntimeError(f"powerloss filesystem: {out['error']}")
        return out

    def _subdir(self, under: str | os.PathLike[str] | None) -> str:
        if under is None:
            return ""
        return str(Path(os.path.abspath(under)).relative_to(os.path.abspath(self.mount)))

    def power_loss(self, under: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Drop every unsynced change, or those of the files under the
        directory ``under`` (a path on the mount): ``{"files": n,
        "dirty_bytes_dropped": bytes, "dropped": {path: bytes}}``. Stop the
        processes writing there first: a write that lands after this is
        simply unsynced again."""
        return self._call("power_loss", self._subdir(under))

    def dirty(self, under: str | os.PathLike[str] | None = None) -> dict[str, int]:
        """Unsynced bytes per file (path relative to the mount), of every
        file or of those under the directory ``under``."""
        got = self._call("dirty", self._subdir(under))["dirty"]
        return {str(k): int(v) for k, v in got.items()}

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def run(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``fn`` (which touches the mount) in a helper thread; if it does
        not return in time, kill the FUSE server (which fails the stuck call)
        and raise, instead of hanging the test."""
        box: list[Any] = []

        def target() -> None:
            try:
                box.append((True, fn()))
            except BaseException as e:
                box.append((False, e))

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            self.kill_server()
            t.join(10)
            raise TimeoutError(f"a call on the FUSE mount hung for {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        result: T = value
        return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: powerloss.py serve BACKING MOUNT CONTROL_SOCKET")
