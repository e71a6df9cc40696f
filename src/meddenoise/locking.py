"""One writer per output folder: an advisory lock (fcntl.flock) on DIR/.meddenoise.lock.

prepare, train, federated, obfuscate and reproduce hold the lock of their output folder while they write
it, so a second process aimed at the same folder stops at once with "another meddenoise process (pid N) is
writing DIR"
instead of deleting or overwriting the first one's files. The kernel drops the lock when its holder dies, so
a lock file left behind by a killed process (a stale pid) never blocks anyone. The pid in the file is only for
the message. Taking the lock again in the same process (reproduce calling prepare and train) nests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from meddenoise.errors import MeddenoiseError

LOCK_NAME = ".meddenoise.lock"
# Filesystems without flock (some network mounts): writing goes on unlocked rather than not at all.
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_held: dict[str, list[int]] = {}  # resolved folder -> [fd, nesting depth]


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the write lock of the existing folder `folder` for the block; MeddenoiseError if another
    process holds it."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(folder)
    _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _held[key]
        _release(folder, fd)


def _acquire(folder: Path) -> int:
    path = folder / LOCK_NAME
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MeddenoiseError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                return -1
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise MeddenoiseError(
                    f"another meddenoise process (pid {holder}) is writing {folder}; wait for it to finish, "
                    "stop it, or choose another output folder"
                ) from None
            raise MeddenoiseError(f"cannot lock {path}: {exc.strerror or exc}") from None
        # The previous holder unlinks the file on release; if it did so between our open and our lock, we
        # hold a lock on a file nobody else will see: try again with the current one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise MeddenoiseError(f"could not lock {folder}: its lock file keeps changing")


def _release(folder: Path, fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        (folder / LOCK_NAME).unlink()  # while still holding the lock (see _acquire)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
