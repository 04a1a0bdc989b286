"""Atomic file writes: a crash or a kill leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a `.safetensors` file atomically: safetensors writes by name, so a temporary name is renamed."""
    # Imported here: the data scripts use this module and start without loading torch.
    from safetensors.torch import save_file

    tmp = temp_path_beside(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        atomic_replace_from(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
