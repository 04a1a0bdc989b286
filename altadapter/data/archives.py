"""Unpack a zip or tar of tagged images (DeepGHS / CyberHarem "IMG+TXT" archives) for the converter.

Only regular files are unpacked; a member whose name would land outside the target folder (an absolute path,
`..`) refuses the whole archive, since only a crafted archive holds one. Members keep their modification
times, so converting the same archive again finds its earlier copies unchanged.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ArchiveError(ValueError):
    """An archive that cannot be read, or one with a member that would land outside its folder."""


def is_archive(path: Path) -> bool:
    """Whether `path` is a file the converter unpacks (by its name's ending)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(archive: Path, name: str) -> PurePosixPath:
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ArchiveError(f"--image_dir {archive}: member {name!r} would land outside the archive's folder")
    return relative


def _zip_members(archive: Path) -> Iterator[tuple[str, float, IO[bytes]]]:
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            if not info.is_dir():
                with opened.open(info) as reader:
                    yield info.filename, time.mktime((*info.date_time, 0, 0, -1)), reader


def _tar_members(archive: Path) -> Iterator[tuple[str, float, IO[bytes]]]:
    with tarfile.open(archive) as opened:
        for member in opened:
            if member.isfile():  # links, devices and folders are not pictures or tags
                with opened.extractfile(member) as reader:
                    yield member.name, float(member.mtime), reader


def extract_archive(archive: Path, target: Path) -> int:
    """Unpack the regular files of a zip or tar `archive` into `target`; returns how many."""
    zipped = archive.name.lower().endswith(".zip")
    count = 0
    try:
        for name, mtime, reader in (_zip_members if zipped else _tar_members)(archive):
            path = target / _safe_name(archive, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                shutil.copyfileobj(reader, handle)
            os.utime(path, (mtime, mtime))
            count += 1
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise ArchiveError(f"--image_dir {archive}: not a readable zip or tar archive ({error})") from None
    return count
