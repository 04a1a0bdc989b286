"""Records from a `datasets` source: a hub id, a folder (or file) of parquet/arrow/json/csv, a saved dataset.

Pictures stay in the dataset's memory-mapped table and are read when the latent cache needs them, so a
dataset larger than memory trains as well as a folder does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from altadapter.data.records import DatasetError, Record
from altadapter.data.tags import tags_caption

logger = logging.getLogger(__name__)

# A single data file: the `datasets` builder that reads it.
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what Dataset(Dict).save_to_disk writes
_LOCAL = (
    "a local folder of parquet/arrow/json files, a folder written by Dataset.save_to_disk, "
    "or --data_dir with images and tag files"
)


@dataclass(frozen=True, eq=False)
class DatasetImage:
    """The picture in row `index` of a dataset's image column, read only when asked for."""

    rows: datasets.Dataset  # the image column alone, not decoded
    index: int
    column: str
    name: str  # for messages: "NAME[row]"
    root: Path | None  # where a relative path in the column starts (a local dataset's folder)

    def read_bytes(self) -> bytes:
        value = self.rows[self.index][self.column]
        if isinstance(value, dict):  # an Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, bytes):
            return value
        if not value:
            raise OSError(f"{self.name}: no picture")
        path = Path(value)
        return (self.root / path if self.root and not path.is_absolute() else path).read_bytes()

    def __str__(self) -> str:
        return self.name


def load_rows(name: str, config_name: str | None) -> tuple[datasets.Dataset, Path | None]:
    """The dataset's training rows, and its folder when it is local."""
    path = Path(name).expanduser()
    if not path.exists():
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise DatasetError(f"--dataset_name {name}: no such folder or file")
        return _training_split(name, _load_from_hub(name, config_name)), None
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix.lower() in FILE_BUILDERS:
            loaded = datasets.load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(path), config_name)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"--dataset_name {name}: cannot be read as a dataset ({reason})") from None
    return _training_split(name, loaded), path if path.is_dir() else path.parent


def _load_from_hub(name: str, config_name: str | None) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(name, config_name)
    except datasets.exceptions.DatasetNotFoundError as error:
        raise DatasetError(
            f"--dataset_name {name}: not on the Hugging Face Hub ({error}); pass {_LOCAL}"
        ) from None
    except (ConnectionError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(
            f"--dataset_name {name}: the Hugging Face Hub cannot be reached and the dataset is not cached "
            f"({reason}); pass {_LOCAL}"
        ) from None


def _training_split(name: str, loaded: datasets.Dataset | datasets.DatasetDict) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if "train" in loaded or len(loaded) == 1:
        return loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    raise DatasetError(f"--dataset_name {name} has the splits {', '.join(loaded)}, none called train")


def _check_columns(name: str, rows: datasets.Dataset, image_column: str, caption_column: str) -> None:
    for flag, column in (("--image_column", image_column), ("--caption_column", caption_column)):
        if column not in rows.column_names:
            raise DatasetError(
                f"{flag} {column}: --dataset_name {name} has no such column; its columns: "
                f"{', '.join(rows.column_names)}"
            )
    image = rows.features[image_column]
    if not isinstance(image, datasets.Image) and getattr(image, "dtype", None) not in (
        "binary",
        "large_binary",
        "string",
        "large_string",
    ):
        raise DatasetError(f"--image_column {image_column} holds {image}, not pictures (bytes or file paths)")
    caption = rows.features[caption_column]
    texts = getattr(caption, "feature", caption)  # a list's items, or the value itself
    if getattr(texts, "dtype", None) not in ("string", "large_string"):
        raise DatasetError(f"--caption_column {caption_column} holds {caption}, not text or a list of texts")


def caption_texts(value: Any, caption_list: str) -> list[str]:
    """The captions of one row: a text, a list of tags joined into one, or a list of captions; [] for none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if caption_list == "tags":
        caption = tags_caption(value)
        return [caption] if caption else []
    return list(dict.fromkeys(text.strip() for text in value if text and text.strip()))


def read_dataset(
    name: str, config_name: str | None, *, image_column: str, caption_column: str, caption_list: str
) -> list[Record]:
    """One record per row with a picture and a caption; rows without either are counted and skipped."""
    rows, root = load_rows(name, config_name)
    _check_columns(name, rows, image_column, caption_column)
    images = rows.select_columns([image_column])
    if isinstance(images.features[image_column], datasets.Image):
        images = images.cast_column(image_column, datasets.Image(decode=False))  # bytes, decoded when used
    records, skipped = [], Counter()
    for index, value in enumerate(rows[caption_column]):
        texts = caption_texts(value, caption_list)
        if not texts:
            skipped["no caption"] += 1
            continue
        image = DatasetImage(images, index, image_column, f"{name}[{index}]", root)
        records.append(Record(image, texts[0], tuple(texts[1:])))
    if skipped:
        logger.warning("%s: skipped rows (%s)", name, ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    if not records:
        raise DatasetError(
            f"--dataset_name {name}: no row has a caption in --caption_column {caption_column}"
        )
    return records
