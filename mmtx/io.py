"""Files: the one atomic write, the one directory lock, and UTF-8 reading.

Everything mmtx writes that a person or a later run reads back (checkpoints, results, caches,
images, judges) goes through `atomic_path`: the bytes land in a temporary file beside the target,
reach the disk, and only then are renamed over it. A crash, a full disk or Ctrl-C therefore
leaves either the old file or the new one, never half of one (and never a 0-byte PNG).
Imports nothing else of mmtx, so every layer may use it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


class DirectoryInUse(ValueError):
    """Another live process is writing the run (or experiment) directory asked for."""


class WriteError(OSError):
    """A file could not be written (disk full, read-only file system, no permission). Its text
    is one line naming the file and why, so a command prints it without a traceback."""

    def __str__(self) -> str:
        return str(self.strerror)


_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) quote errno
_FEW_BYTES = 1 << 20  # a write that failed with less than this left free: the disk was full


def write_error(path: str | Path, e: BaseException) -> WriteError | None:
    """The WriteError for a failure `e` while writing `path`, or None when `e` is no I/O failure.
    Libraries report a full disk in their own words (safetensors: "os error 28"; torch's zip
    writer: a RuntimeError, "unexpected pos"): such an error with under 1 MiB left free
    counts as a full disk."""
    if isinstance(e, WriteError):
        return e
    code = e.errno if isinstance(e, OSError) else None
    found = _OS_ERROR.search(str(e))
    code = code or (int(found.group(1)) if found else None)
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if code is None and isinstance(e, RuntimeError) and free < _FEW_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    return WriteError(code, f"cannot write {path}: {os.strerror(code)} ({free:,} bytes free "
                            f"on its file system)", str(path))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; when the block ends without error, the file
    written there is flushed to disk and renamed onto `path` (atomic on one filesystem).
    On any error, the temporary file is removed and `path` is left as it was; a failure to
    write (full disk, read-only folder) is a WriteError naming `path`.

    Libraries that take a file name (safetensors, matplotlib, PIL, numpy) write to the yielded
    path; the suffix is kept so that they infer the same format."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600: give the mode open() would have given
        os.replace(tmp, path)
    except Exception as e:
        error = write_error(path, e)  # before the temporary file frees its space
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=1))


def read_utf8(path, what: str) -> str:
    """The text of a UTF-8 file; any other encoding is a ValueError naming the file (`what`
    says what it is, e.g. "captions") and the first byte that does not decode."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {str(path)!r}: not UTF-8 text (byte {e.start} is "
                         f"{e.object[e.start]:#04x}); save it as UTF-8") from None


@contextmanager
def exclusive(directory: str | Path, what: str = "run_dir"):
    """Hold an flock on DIRECTORY/.lock while the block runs: one writer per directory. A
    second process is refused at once, naming the holder's pid. The kernel drops the lock when
    its holder exits, even by SIGKILL, so a crash never leaves a stale lock behind.

    Under `accelerate launch` every process runs the same code and rank 0 writes the files,
    so rank 0 alone takes the lock (RANK is unset for a single process)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    directory = Path(directory)
    for place in (directory, *directory.parents):  # the nearest that exists must be a folder
        if place.exists():
            if not place.is_dir():
                raise ValueError(f"{what} {str(directory)!r}: {str(place)!r} is a file, not a "
                                 "directory")
            break
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"  # the holder writes its pid just after
            raise DirectoryInUse(f"{what} {str(directory)!r} is in use by another process "
                                 f"(pid {holder}); wait for it to end, or stop it (Ctrl-C "
                                 f"saves a checkpoint) and run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
