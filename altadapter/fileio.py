"""Atomic file writes: a crash, a kill or a full disk leaves either the old file or the new one, never half
of one; a write that fails names the file and the bytes it needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from altadapter.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in the directory of `path`, with the permissions a plain open() would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes 0600 files; the renamed result should be readable as any file the user writes.
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp_name


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`."""
    # Same directory as the target, so os.replace is a rename on one file system (atomic on POSIX).
    fd, tmp_name = _make_temp_beside(Path(path))
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_replace_from(tmp_path: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file over `path` atomically (for writers that need a file name)."""
    with open(tmp_path, "rb") as handle:
        os.fsync(handle.fileno())
        # Some writers (safetensors) replace the file we made, with their own 0600 permissions.
        os.fchmod(handle.fileno(), 0o666 & ~_umask())
    os.replace(tmp_path, path)


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A fresh temporary file name in the directory of `path`, for libraries that write by name."""
    fd, tmp_name = _make_temp_beside(Path(path))
    os.close(fd)
    return Path(tmp_name)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; a failed write (a full disk, a read-only folder) is an OutputError
    that names the file and its size, and leaves whatever `path` held before."""
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise OutputError(describe_write_failure(Path(path), len(data), error)) from error


def describe_write_failure(path: Path, needed: int, error: BaseException, *, about: bool = False) -> str:
    """`could not write PATH (why): it needs N bytes and M are free there`, for an OutputError's line."""
    if isinstance(error, OSError) and error.errno:
        reason = error.strerror or os.strerror(error.errno)
    else:  # torch.save reports a failed write as a RuntimeError without an errno
        reason = (str(error).splitlines() or [type(error).__name__])[0]
    return (
        f"could not write {path} ({reason}): it needs {'about ' if about else ''}{needed:,} bytes and "
        f"{free_bytes(path):,} are free there"
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing folder)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a `.safetensors` file atomically, as `write_bytes` writes.

    Serialised in memory first: safetensors' own file writer can drop a failed final write without an
    error (a full disk then leaves a short file), while Python's write, flush and fsync raise it.
    """
    # Imported here: the data scripts use this module and start without loading torch.
    from safetensors.torch import save

    write_bytes(path, save(tensors, metadata=metadata))
