"""Danbooru-style tags: captions split by the one normaliser (`altadapter.data.tag_text`), tag files, sidecars,
and kohya's `N_concept` folders."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

from altadapter.data.tag_text import SEPARATORS, normalise_tag

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Order is preference: an image with both `name.txt` and `name.caption` takes `name.txt`.
TAG_EXTENSIONS = (".txt", ".caption")
# kohya's sd-scripts train on `train_data_dir/N_concept/`: N repeats of each picture per epoch; the concept's
# words caption a picture that has no tag file.
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


class TagFileError(ValueError):
    """A tag file that cannot be decoded as UTF-8."""


@dataclass(frozen=True)
class TaggedImage:
    """An image file and its sidecar tag file (None when the image has none)."""

    image: Path
    tag_file: Path | None


@dataclass(frozen=True)
class FolderScan:
    """Images of a folder tree with their sidecar tag files, and tag files that belong to no image."""

    images: list[TaggedImage]
    orphan_tag_files: list[Path]


def split_tags(text: str, *, underscores_to_spaces: bool = False) -> list[str]:
    """Split a caption on `,` `，` and newlines; tags stripped, empty ones and repeats dropped, order kept."""
    tags: list[str] = []
    seen: set[str] = set()
    for raw in SEPARATORS.split(text):
        # Inner runs of whitespace collapse too, so "long  hair" and "long hair" count as one tag.
        tag = normalise_tag(raw, underscores_to_spaces=underscores_to_spaces)
        if tag and tag not in seen:
            seen.add(tag)
            tags.append(tag)
    return tags


def tags_caption(tags: Iterable[str], *, underscores_to_spaces: bool = False) -> str:
    """One caption from a list of tags (a dataset's tag column): each normalised, empty ones and repeats dropped."""
    normalised = (normalise_tag(raw, underscores_to_spaces=underscores_to_spaces) for raw in tags)
    return join_tags(dict.fromkeys(tag for tag in normalised if tag))


def join_tags(tags: Iterable[str]) -> str:
    """The caption text written into metadata.jsonl: tags joined with ", "."""
    return ", ".join(tags)


def read_tag_file(path: str | os.PathLike, *, underscores_to_spaces: bool = False) -> list[str]:
    """Read and normalise a sidecar tag file (UTF-8 with or without BOM)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TagFileError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from err
    return split_tags(text, underscores_to_spaces=underscores_to_spaces)


@dataclass(frozen=True)
class KohyaFolder:
    """kohya's `N_concept` folder: each picture in it is seen `repeats` times per epoch."""

    repeats: int
    concept: str


def kohya_folder(relative: PurePath) -> KohyaFolder | None:
    """The kohya folder a picture sits in (the first folder of its path under the dataset root), or None."""
    match = KOHYA_FOLDER.match(relative.parts[0]) if len(relative.parts) > 1 else None
    if match is None or int(match[1]) < 1:
        return None
    return KohyaFolder(int(match[1]), match[2])


def find_tagged_images(root: str | os.PathLike) -> FolderScan:
    """Walk `root` (nested folders, any case of extension); pair each image with stem.txt or stem.caption."""
    root = Path(root)
    images: list[TaggedImage] = []
    orphans: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden entries (.git, .ipynb_checkpoints, macOS "._x.png" resource forks) are never dataset files.
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        folder = Path(dirpath)
        tag_files: dict[str, dict[str, Path]] = {}
        image_files: list[Path] = []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = folder / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                image_files.append(path)
            elif suffix in TAG_EXTENSIONS:
                tag_files.setdefault(path.stem, {})[suffix] = path
        for image in image_files:
            candidates = tag_files.get(image.stem, {})
            tag_file = next((candidates[ext] for ext in TAG_EXTENSIONS if ext in candidates), None)
            images.append(TaggedImage(image, tag_file))
        image_stems = {image.stem for image in image_files}
        orphans.extend(
            path for stem, by_ext in tag_files.items() if stem not in image_stems for path in by_ext.values()
        )
    return FolderScan(images=images, orphan_tag_files=sorted(orphans))
