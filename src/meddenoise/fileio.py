"""Atomic file writes: a killed process never leaves a half-written file that looks valid.

Everything is written to a temporary file in the destination folder, flushed and fsynced, then renamed over
the destination; `os.replace` is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from meddenoise.errors import ConfigError, DiskFullError, MeddenoiseError

# Errors of a write that the file system refused for lack of room (or quota, or file size limit).
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def ensure_writable_dir(
    path: str | os.PathLike, what: str = "output folder", parameter: str | None = None
) -> Path:
    """Create `path` if needed and check that we can write into it; raise a clear error otherwise (a
    `ConfigError` naming `parameter` when one is given, so the CLI can name the flag that chose the path)."""
    folder = Path(path)
    error = MeddenoiseError if parameter is None else lambda message: ConfigError(message, parameter)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{what} {folder} is not writable; choose another path")
    return folder


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary sibling of `path` for writing; it replaces `path` only if the block completes."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open supports 'wb' and 'w' only")
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    # mkstemp creates files readable by the owner only; give the result the permissions a plain open() would.
    os.chmod(tmp_name, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise MeddenoiseError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise MeddenoiseError(f"{what} {path} is not valid JSON ({exc}); it may be corrupt") from None


# ---- free space --------------------------------------------------------------------------------------------


def format_size(num_bytes: float) -> str:
    """Bytes for a message: GB from 10 MB up (as users think of disks), MB below."""
    if num_bytes >= 10e6:
        return f"{num_bytes / 1e9:.2f} GB"
    return f"{num_bytes / 1e6:.1f} MB"


def free_bytes(folder: str | os.PathLike) -> int:
    return shutil.disk_usage(folder).free


def require_free_space(
    folder: str | os.PathLike,
    needed: int,
    what: str,
    advice: str = "free some space or choose another folder",
    parameter: str | None = None,
) -> None:
    """DiskFullError ("needs X GB in DIR, Y GB free") unless `folder`'s file system has `needed` bytes;
    `parameter` names the option the advice is about."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskFullError(
            f"{what} needs {format_size(needed)} in {folder}, {format_size(free)} free; {advice}",
            parameter=parameter,
        )


def reserve_space(path: str | os.PathLike, size: int, what: str) -> None:
    """Allocate the blocks of `path` up to `size` bytes now, so writing it later through a memory map cannot
    hit a full disk (which kills the process with SIGBUS instead of raising an error). On a file system that
    cannot reserve space the free-space check made before is all there is."""
    fd = os.open(path, os.O_RDWR)
    try:
        _allocate(fd, size)
    except OSError as exc:
        if exc.errno in SPACE_ERRNOS:
            folder = Path(path).parent
            raise DiskFullError(
                f"{what} needs {format_size(size)} in {folder}, {format_size(free_bytes(folder))} free; free "
                "some space or choose another folder"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _allocate(fd: int, size: int) -> None:
    """fallocate(2) where the C library has it: unlike posix_fallocate it never falls back to touching every
    block from user space, which on a file system without native support (older NFS) would take as long as
    writing the file. Elsewhere posix_fallocate."""
    import ctypes
    import ctypes.util

    try:
        fallocate = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).fallocate
    except (OSError, AttributeError):
        os.posix_fallocate(fd, 0, size)
        return
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if fallocate(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def is_space_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS
