"""Dataset records: (image, caption) pairs from metadata.jsonl or a plain image + tag folder.

Free of torch, so the data scripts (meta_file_converter.py, prompts_generator.py) start quickly.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np
from PIL import Image, ImageOps

from altadapter.data.tags import (
    TagFileError,
    find_tagged_images,
    join_tags,
    kohya_folder,
    read_tag_file,
    split_tags,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
_CONVERT_HINT = "run `python meta_file_converter.py --image_dir IMAGE_DIR --output_dir OUTPUT_DIR` first"


class DatasetError(ValueError):
    """A dataset folder that cannot be read, with what to do about it."""


class ImageSource(Protocol):
    """Where a picture's bytes come from: a `Path`, or a row of a `datasets` table (`DatasetImage`)."""

    def read_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class Record:
    """One training example: a picture, its caption(s) and how often an epoch shows it."""

    image: Path | ImageSource
    caption: str  # the caption; of a dataset's list of captions, the first
    other_captions: tuple[str, ...] = ()  # the rest of such a list: each step draws one of all
    repeats: int = 1  # kohya's N_concept folders: the picture is seen N times per epoch

    @property
    def captions(self) -> tuple[str, ...]:
        return (self.caption, *self.other_captions)


def scan_dataset(data_dir: str | os.PathLike) -> list[Record]:
    """Records from `data_dir/metadata.jsonl` (its optional "repeats" kept), or from image + sidecar tag files
    when there is no metadata (pictures of kohya's N_concept folders repeated N times)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist; {_CONVERT_HINT}")
    if (data_dir / METADATA_FILE).is_file():
        records = _read_metadata(data_dir)
    else:
        records = _read_tagged_folder(data_dir)
    if not records:
        raise DatasetError(f"{data_dir} holds no captioned images; {_CONVERT_HINT}")
    return records


def _read_metadata(data_dir: Path) -> list[Record]:
    metadata = data_dir / METADATA_FILE
    records = []
    with open(metadata, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{metadata}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err.msg}); {_CONVERT_HINT}") from err
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or "text" not in row:
                raise DatasetError(f'{where}: each line needs "file_name" and "text"; {_CONVERT_HINT}')
            repeats = row.get("repeats", 1)
            if type(repeats) is not int or repeats < 1:
                raise DatasetError(
                    f'{where}: "repeats" must be a whole number of at least 1, got {repeats!r}'
                )
            relative = Path(row["file_name"])
            if relative.is_absolute() or ".." in relative.parts:
                raise DatasetError(
                    f"{where}: file_name {row['file_name']!r} must be a path inside {data_dir}"
                )
            image_path = data_dir / relative
            if not image_path.is_file():
                raise DatasetError(f"{where}: {image_path} is missing; re-run meta_file_converter.py")
            records.append(Record(image_path, str(row["text"]), repeats=repeats))
    return records


def _read_tagged_folder(data_dir: Path) -> list[Record]:
    records = []
    skipped: Counter[str] = Counter()
    for item in find_tagged_images(data_dir).images:
        kohya = kohya_folder(item.image.relative_to(data_dir))
        if item.tag_file is None and kohya is None:
            skipped["no tag file"] += 1
            continue
        try:
            # As kohya does, a picture of an N_concept folder without a tag file is captioned by the concept.
            tags = read_tag_file(item.tag_file) if item.tag_file else split_tags(kohya.concept)
        except (OSError, TagFileError):
            skipped["unreadable tag file"] += 1
            continue
        if not tags:
            skipped["empty tag file"] += 1
            continue
        records.append(Record(item.image, join_tags(tags), repeats=kohya.repeats if kohya else 1))
    if skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
        logger.warning(
            "%s: skipped images without usable tags (%s); meta_file_converter.py lists them",
            data_dir,
            reasons,
        )
    return records


def image_input(image: str | os.PathLike | ImageSource) -> str | os.PathLike | IO[bytes]:
    """What Pillow opens for a picture: a file path as it is, anything else through its bytes."""
    return image if isinstance(image, str | os.PathLike) else io.BytesIO(image.read_bytes())


def open_rgb(source: str | os.PathLike | ImageSource) -> Image.Image:
    """Decode an image fully as 8-bit RGB: EXIF rotation applied, 16-bit scaled, transparency over white."""
    with Image.open(image_input(source)) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Pillow's own I;16 -> RGB conversion clips at 255 (a 16-bit image turns white); scale instead.
        levels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))  # mode L
    if image.has_transparency_data:
        # Transparent pixels often store black; a white backdrop is what viewers of these images see.
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, rgba)
    return image.convert("RGB")
