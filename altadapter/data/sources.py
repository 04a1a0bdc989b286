"""Where a dataset comes from: a folder (`--data_dir`) or anything `datasets` loads (`--dataset_name`).

The flags are diffusers' train_text_to_image.py names, shared by the training scripts and prompts_generator.py.
`datasets` is imported only when `--dataset_name` is given, so the folder path starts as quickly as before.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from altadapter.data.records import Record, scan_dataset

# How a list in --caption_column is read: tags of one caption, or captions of which each step draws one.
CAPTION_LISTS = ("tags", "captions")


@dataclass(frozen=True)
class DataSource:
    """A dataset folder, or a `datasets` source with the columns that hold pictures and captions."""

    data_dir: str | None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    image_column: str = "image"
    caption_column: str = "text"
    caption_list: str = "tags"

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.dataset_name is None):
            raise ValueError("give either --data_dir (a folder) or --dataset_name (a datasets source)")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"--data_dir {self.data_dir}: no such folder; run meta_file_converter.py first")
        if self.caption_list not in CAPTION_LISTS:
            raise ValueError(f"--caption_list {self.caption_list}: must be one of {', '.join(CAPTION_LISTS)}")

    def load(self) -> list[Record]:
        """The source's records; DatasetError (a ValueError) says what is wrong and what to do."""
        if self.data_dir is not None:
            return scan_dataset(self.data_dir)
        from altadapter.data.dataset_records import read_dataset  # imports `datasets`: only when asked

        return read_dataset(
            self.dataset_name,
            self.dataset_config_name,
            image_column=self.image_column,
            caption_column=self.caption_column,
            caption_list=self.caption_list,
        )


def add_source_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, data_dir_help: str) -> None:
    """--data_dir or --dataset_name (one of them), and the columns of a `datasets` source."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data_dir", "--train_data_dir", default=None, help=data_dir_help)
    where.add_argument(
        "--dataset_name",
        default=None,
        help="anything datasets.load_dataset takes: a hub id (where the hub is reachable or the dataset is "
        "cached), a folder of parquet/arrow/json files, or a folder written by Dataset.save_to_disk",
    )
    parser.add_argument(
        "--dataset_config_name", default=None, help="the --dataset_name configuration, if it has several"
    )
    parser.add_argument("--image_column", default="image", help="the --dataset_name column of pictures")
    parser.add_argument(
        "--caption_column",
        default="text",
        help="the --dataset_name column of captions: a text, a list of tags, or a list of captions "
        "(see --caption_list)",
    )
    parser.add_argument(
        "--caption_list",
        choices=CAPTION_LISTS,
        default="tags",
        help="how a list in --caption_column is read: tags of one caption (joined with ', '), or captions "
        "of which each training step draws one (as diffusers' train_text_to_image.py does)",
    )


def source_from_args(args: argparse.Namespace) -> DataSource:
    """The checked source of parsed flags."""
    return DataSource(
        args.data_dir,
        args.dataset_name,
        args.dataset_config_name,
        args.image_column,
        args.caption_column,
        args.caption_list,
    )
