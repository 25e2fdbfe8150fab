"""Atomic outputs: a reader sees the old file or directory (or none) or the complete new one,
never a part, and two writers of one output never both believe they wrote it.

Everything is built in a hidden temporary sibling (`.<name>.tmp-<host>-<pid>-<start>-<random>`),
fsynced, then renamed into place:

- a new output is published with a rename that fails if the target exists (Linux
  `renameat2(RENAME_NOREPLACE)`; elsewhere an empty placeholder made with mkdir, which is
  atomic, is replaced), so of two concurrent writers exactly one publishes and the other gets
  FileExistsError with nothing left behind;
- `overwrite=True` swaps the new directory with the old one in one step (`RENAME_EXCHANGE`, else
  rename aside then into place) and then deletes the old one;
- while a directory is being built, an advisory lock (`.<name>.lock`, removed at the end) makes a
  second writer of the same output fail at once instead of after all its work.

A kill leaves only hidden siblings; their names carry the writer's host, pid and process start
time, so the next writer into the same folder removes the ones whose process is provably gone
(`remove_stale`). Files and directories get the permissions the umask gives, as other tools do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import zlib
from collections.abc import Iterator

__all__ = ["atomic_file", "atomic_dir", "fsync_dir", "remove_stale", "publish_dir", "staging_dir", "OutputLocked"]

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputLocked(FileExistsError):
    """Another process is writing the same output right now."""


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(mask)
    return mask


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{_host_tag()}-{pid}-{_start_time(pid) or 0}-{secrets.token_hex(4)}"


_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}$")


def remove_stale(parent: str) -> list[str]:
    """Remove the temporary siblings in `parent` left by killed writers on this host: those
    whose pid no longer runs, or runs a process started at another time. Returns their names."""
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        m = _SIBLING.match(entry)
        if m is None or m["host"] != host or _start_time(int(m["pid"])) == m["start"]:
            continue
        full = os.path.join(parent, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
        removed.append(entry)
    return removed


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """renameat2(2); False where the kernel, libc or filesystem does not offer the flag."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _exists_error(path: str) -> FileExistsError:
    return FileExistsError(f"output {path!r} already exists (pass overwrite=True to replace it)")


def publish_dir(tmp: str, path: str, *, overwrite: bool) -> None:
    """Move the finished directory `tmp` to `path` in one step (see the module docstring)."""
    _fsync_tree(tmp)
    parent = os.path.dirname(path)
    if not overwrite:
        try:
            done = _renameat2(tmp, path, _RENAME_NOREPLACE)
        except FileExistsError:
            raise _exists_error(path) from None
        if not done:
            try:
                os.mkdir(path)  # atomic reservation; rename may replace an empty directory
            except FileExistsError:
                raise _exists_error(path) from None
            os.replace(tmp, path)
        fsync_dir(parent)
        return
    if os.path.lexists(path):
        if _renameat2(tmp, path, _RENAME_EXCHANGE):
            old = tmp  # the old output now lives under the temporary name
        else:
            old = os.path.join(parent, f".{os.path.basename(path)}.old-{_owner_tag()}")
            os.replace(path, old)
            os.replace(tmp, path)
        fsync_dir(parent)
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        return
    os.replace(tmp, path)
    fsync_dir(parent)


@contextlib.contextmanager
def _output_lock(path: str) -> Iterator[None]:
    lock = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(f"output {path!r} is being written by another process") from None
        # The lock file may have been removed and recreated between open and flock: retry
        # until the locked file is the one at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def staging_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Reserve `path` (lock, existence check, stale siblings removed) and yield an empty
    temporary directory beside it; the caller publishes it with `publish_dir`. On an exception
    the temporary directory is removed."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    with _output_lock(path):
        if os.path.lexists(path) and not overwrite:
            raise _exists_error(path)
        remove_stale(parent)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{_owner_tag()}")
        os.mkdir(tmp, 0o777 & ~_umask())
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory next to `path`; on normal exit it becomes `path`.

    `path` must not exist unless `overwrite` is true, in which case the old directory is
    replaced in one step. FileExistsError (OutputLocked while another process writes it) if it
    exists or appears meanwhile; either way nothing is left behind.
    """
    path = os.path.abspath(os.fspath(path))
    with staging_dir(path, overwrite=overwrite) as tmp:
        yield tmp
        try:
            publish_dir(tmp, path, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on normal exit it replaces `path` atomically.

    The caller writes the whole file to the yielded path (any writer that takes a filename, such
    as `safetensors.torch.save_file`). The file gets the permissions the umask gives.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{_owner_tag()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
