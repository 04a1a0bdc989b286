"""Turn a folder (or a zip / tar) of tagged images into an image-folder dataset: the images plus metadata.jsonl.

The output loads with `datasets.load_dataset("imagefolder", data_dir=output_dir)` and with `scan_dataset`.
Images keep their relative paths (so equal stems in different folders stay apart) and their bytes: the
reader converts every mode to RGB, and unchanged bytes keep the latent cache's content keys valid. Pictures
of kohya's `N_concept` folders keep their N as a "repeats" field, which training honours.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from altadapter.data.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive
from altadapter.data.records import METADATA_FILE, open_rgb
from altadapter.data.tags import (
    IMAGE_EXTENSIONS,
    KohyaFolder,
    TagFileError,
    TaggedImage,
    find_tagged_images,
    join_tags,
    kohya_folder,
    read_tag_file,
    split_tags,
)
from altadapter.errors import UserError
from altadapter.fileio import atomic_replace_from, atomic_write, temp_path_beside

EXAMPLES_PER_REASON = 3


class ConversionError(UserError):
    """A run that must not go ahead: nothing to convert, overlapping folders, a skip under --strict."""


class _Skip(Exception):
    """Why one input file is left out; the message is the reason counted in the summary."""


@dataclass
class ConversionSummary:
    """What a conversion did: images converted (and how), files skipped by reason with the first few names."""

    output_dir: Path
    converted: int = 0
    written: Counter[str] = field(default_factory=Counter)  # "copied" / "hard-linked" / "unchanged"
    removed_stale: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_names: dict[str, list[str]] = field(default_factory=dict)
    kohya_folders: Counter[str] = field(default_factory=Counter)  # "10_alice" -> pictures converted from it

    def skip(self, reason: str, name: str) -> None:
        """Count one skipped file, remembering the first few names for each reason."""
        self.skipped[reason] += 1
        names = self.skipped_names.setdefault(reason, [])
        if len(names) < EXAMPLES_PER_REASON:
            names.append(name)

    def format_skipped(self) -> str:
        """One line per skip reason: count and first names."""
        lines = [f"skipped {self.skipped.total()} files:"]
        for reason, count in sorted(self.skipped.items()):
            more = ", ..." if count > len(self.skipped_names[reason]) else ""
            lines.append(f"  {reason}: {count} ({', '.join(self.skipped_names[reason])}{more})")
        return "\n".join(lines)

    def format(self) -> str:
        """The summary printed at the end of a run."""
        how = ", ".join(f"{count} {kind}" for kind, count in sorted(self.written.items()))
        lines = [f"converted {self.converted} images into {self.output_dir} ({how})"]
        if self.removed_stale:
            lines.append(f"removed {self.removed_stale} images of an earlier run whose source is gone")
        lines.append(self.format_skipped() if self.skipped else "skipped 0 files")
        if self.kohya_folders:
            # Said out loud: a folder named like "2024_trip" is read as kohya's 2024 repeats too.
            folders = ", ".join(f"{name} ({count})" for name, count in sorted(self.kohya_folders.items()))
            lines.append(f"kohya N_concept folders, each picture repeated N times per epoch: {folders}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Planned:
    source: Path
    file_name: str  # relative POSIX path, both inside the input and the output folder
    text: str
    repeats: int  # of a kohya N_concept folder; 1 elsewhere

    def metadata_line(self) -> str:
        row = {"file_name": self.file_name, "text": self.text}
        if (
            self.repeats != 1
        ):  # only kohya folders' pictures carry the field, so other outputs stay as they were
            row["repeats"] = self.repeats
        return json.dumps(row, ensure_ascii=False) + "\n"


def convert_dataset(
    image_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    link: bool = False,
    underscores_to_spaces: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> ConversionSummary:
    """Check every image and tag file in `image_dir` (a folder, or a zip / tar of one); copy (or hard-link)
    the good ones to `output_dir`."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    options = {"link": link, "underscores_to_spaces": underscores_to_spaces, "strict": strict}
    if not is_archive(image_dir):
        _check_folders(image_dir, output_dir)
        return _convert_folder(image_dir, output_dir, shown=image_dir, progress=progress, **options)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Unpacked inside the output (one file system, so a hard link or copy stays local), removed after.
    with tempfile.TemporaryDirectory(prefix=".unpacked-", dir=output_dir) as unpacked:
        extract_archive(image_dir, Path(unpacked))
        return _convert_folder(Path(unpacked), output_dir, shown=image_dir, progress=progress, **options)


def _convert_folder(
    image_dir: Path,
    output_dir: Path,
    *,
    shown: Path,
    link: bool,
    underscores_to_spaces: bool,
    strict: bool,
    progress: bool,
) -> ConversionSummary:
    """`convert_dataset` of a folder; `shown` is what messages call the input (the archive it came from)."""
    summary = ConversionSummary(output_dir)
    planned = _plan(image_dir, summary, underscores_to_spaces=underscores_to_spaces, progress=progress)
    if strict and summary.skipped:
        raise ConversionError(
            f"--strict: nothing written, as these would be skipped\n{summary.format_skipped()}"
        )
    if not planned:
        skipped = f"\n{summary.format_skipped()}" if summary.skipped else ""
        raise ConversionError(
            f"no image in {shown} could be converted (looked for {' '.join(IMAGE_EXTENSIONS)}){skipped}"
        )
    # tqdm's disable=None turns the bar off when stderr is not a terminal (logs, CI).
    for item in tqdm(
        planned, desc="hard-linking" if link else "copying", unit="image", disable=None if progress else True
    ):
        summary.written[_materialize(item.source, output_dir / item.file_name, link=link)] += 1
        summary.converted += 1
    # Stale files go before the new metadata lands: a crash in between leaves a state a re-run repairs.
    summary.removed_stale = _remove_stale(output_dir, {item.file_name for item in planned})
    with atomic_write(output_dir / METADATA_FILE) as handle:
        handle.writelines(item.metadata_line() for item in planned)
    return summary


def _check_folders(image_dir: Path, output_dir: Path) -> None:
    if not image_dir.is_dir():
        raise ConversionError(
            f"--image_dir {image_dir} is not a folder or an archive ({' '.join(ARCHIVE_SUFFIXES)})"
        )
    source, target = image_dir.resolve(), output_dir.resolve()
    # Writing into the input, or scanning our own output as input, would break "the input is never modified".
    if source == target or source in target.parents or target in source.parents:
        raise ConversionError(
            f"--output_dir {output_dir} and --image_dir {image_dir} must not contain each other"
        )


def _plan(
    image_dir: Path, summary: ConversionSummary, *, underscores_to_spaces: bool, progress: bool
) -> list[_Planned]:
    scan = find_tagged_images(image_dir)
    for orphan in scan.orphan_tag_files:
        summary.skip("tag file without image", orphan.relative_to(image_dir).as_posix())
    planned = []
    for item in tqdm(scan.images, desc="checking", unit="image", disable=None if progress else True):
        relative = item.image.relative_to(image_dir)
        kohya = kohya_folder(relative)
        try:
            tags = _read_tags(item, kohya, underscores_to_spaces=underscores_to_spaces)
            _verify_image(item.image)
        except _Skip as skip:
            summary.skip(str(skip), relative.as_posix())
            continue
        planned.append(
            _Planned(item.image, relative.as_posix(), join_tags(tags), kohya.repeats if kohya else 1)
        )
        if kohya:
            summary.kohya_folders[relative.parts[0]] += 1
    return planned


def _read_tags(item: TaggedImage, kohya: KohyaFolder | None, *, underscores_to_spaces: bool) -> list[str]:
    if item.tag_file is None:
        # As kohya does, a picture of an N_concept folder without a tag file is captioned by the concept.
        tags = split_tags(kohya.concept, underscores_to_spaces=underscores_to_spaces) if kohya else []
        if not tags:
            raise _Skip("no tag file")
        return tags
    try:
        tags = read_tag_file(item.tag_file, underscores_to_spaces=underscores_to_spaces)
    except (OSError, TagFileError) as err:
        raise _Skip("unreadable tag file") from err
    if not tags:
        raise _Skip("empty tag file")
    return tags


def _verify_image(path: Path) -> None:
    """Decode `path` the way the training reader will; raise _Skip with the reason when that fails."""
    try:
        with warnings.catch_warnings():
            # Past MAX_IMAGE_PIXELS Pillow only warns (an error comes at twice that); such images are too big
            # to be worth decoding at training resolutions and may be decompression bombs.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            open_rgb(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _Skip("image too large") from err
    except UnidentifiedImageError as err:
        raise _Skip("zero-byte file" if path.stat().st_size == 0 else "not an image") from err
    except (
        Exception
    ) as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error... on bad data
        raise _Skip("unreadable image") from err


def _materialize(source: Path, target: Path, *, link: bool) -> str:
    """Put `source` at `target` atomically unless an earlier run already did; say how."""
    if target.is_file() and _up_to_date(source, target, link=link):
        return "unchanged"
    # Write beside the target and rename over it: never write into an existing target, which may be a hard
    # link to the input file.
    temporary = temp_path_beside(target)
    try:
        if link:
            temporary.unlink()
            try:
                os.link(source, temporary)
                os.replace(temporary, target)
                return "hard-linked"
            except OSError:  # another file system, or one without hard links
                pass
        shutil.copy2(source, temporary)
        atomic_replace_from(temporary, target)
        return "copied"
    finally:
        temporary.unlink(missing_ok=True)


def _up_to_date(source: Path, target: Path, *, link: bool) -> bool:
    source_stat, target_stat = source.stat(), target.stat()
    if link:
        return os.path.samestat(source_stat, target_stat)
    # copy2 keeps the modification time, so size + mtime identify an earlier copy of this source.
    return (
        not os.path.samestat(source_stat, target_stat)
        and source_stat.st_size == target_stat.st_size
        and source_stat.st_mtime_ns == target_stat.st_mtime_ns
    )


def _remove_stale(output_dir: Path, keep: set[str]) -> int:
    """Delete images an earlier run's metadata lists but this run does not; only those, nothing else."""
    metadata = output_dir / METADATA_FILE
    if not metadata.is_file():
        return 0
    removed = 0
    for line in metadata.read_text(encoding="utf-8").splitlines():
        try:
            file_name = json.loads(line)["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        relative = PurePosixPath(str(file_name))
        if file_name in keep or relative.is_absolute() or ".." in relative.parts:
            continue
        path = output_dir / relative
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            path.unlink()
            removed += 1
    return removed
