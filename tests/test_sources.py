"""Datasets as people hold them: `--dataset_name` (parquet folders, saved datasets, hub ids) beside folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from training_helpers import COLOURS

import prompts_generator
from altadapter.data.dataset_records import caption_texts
from altadapter.data.records import DatasetError
from altadapter.data.sources import DataSource

REPO = Path(__file__).resolve().parents[1]


def test_a_parquet_folder_gives_one_record_per_row_with_its_tags_and_picture(parquet_dataset):
    records = DataSource(None, str(parquet_dataset), caption_column="tags").load()
    assert [record.caption for record in records] == [
        f"1girl, solo, {list(COLOURS)[i % 4]} hair, dress" for i in range(8)
    ]
    pictures = parquet_dataset.parent / f"{parquet_dataset.name}-pictures"
    assert records[3].image.read_bytes() == (pictures / "img3.png").read_bytes()
    assert str(records[3].image) == f"{parquet_dataset}[3]"


def test_a_saved_dataset_and_a_list_of_captions(tmp_path):
    rows = {"image": [b"not read here"] * 2, "text": [["a red cat", "a cat, red"], [" ", "a dog"]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    records = DataSource(None, str(tmp_path / "saved"), caption_list="captions").load()
    assert [record.captions for record in records] == [("a red cat", "a cat, red"), ("a dog",)]
    as_tags = DataSource(None, str(tmp_path / "saved")).load()
    assert [record.captions for record in as_tags] == [("a red cat, a cat, red",), ("a dog",)]


def test_caption_values_of_every_shape():
    assert caption_texts(" 1girl, solo ", "tags") == ["1girl, solo"]
    assert caption_texts(["long_hair", " solo", "solo", ""], "tags") == ["long_hair, solo"]
    assert caption_texts(["a", "", "a", "b"], "captions") == ["a", "b"]
    assert caption_texts(None, "tags") == caption_texts("  ", "tags") == caption_texts([], "tags") == []


def test_bad_columns_and_unreachable_names_are_one_line_with_the_fix(parquet_dataset, tmp_path):
    with pytest.raises(
        DatasetError, match=r"^--caption_column text: .* no such column; its columns: image, tags$"
    ):
        DataSource(None, str(parquet_dataset)).load()
    with pytest.raises(DatasetError, match="^--image_column tags holds List"):
        DataSource(None, str(parquet_dataset), image_column="tags", caption_column="tags").load()
    # The tests run offline (conftest), as a machine without a network or a cached copy would.
    with pytest.raises(DatasetError) as offline:
        DataSource(None, "someone/arknights-tags").load()
    assert "\n" not in str(offline.value)
    assert str(offline.value).startswith(
        "--dataset_name someone/arknights-tags: the Hugging Face Hub cannot be"
    )
    assert "a local folder of parquet/arrow/json files" in str(offline.value) and "--data_dir" in str(
        offline.value
    )
    with pytest.raises(DatasetError, match="no such folder or file"):
        DataSource(None, str(tmp_path / "nowhere")).load()
    with pytest.raises(ValueError, match="either --data_dir .* or --dataset_name"):
        DataSource(str(tmp_path), str(parquet_dataset))


def test_prompts_generator_samples_a_datasets_tags(parquet_dataset, tmp_path, capsys):
    out = tmp_path / "prompts.txt"
    argv = ["--dataset_name", str(parquet_dataset), "--caption_column", "tags", "--out", str(out)]
    prompts_generator.main(
        prompts_generator.parse_args([*argv, "--min_tags", "2", "--max_tags", "3", "--seed", "0"])
    )
    assert "7 distinct tags in 8 captions" in capsys.readouterr().out
    tags = {"1girl", "solo", "dress", *(f"{colour} hair" for colour in COLOURS)}
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and all(set(line.split(", ")) <= tags for line in lines)


def test_prompts_generator_names_a_missing_column_in_one_line(parquet_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "prompts_generator.py"), "--dataset_name", str(parquet_dataset)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("no such column; its columns: image, tags")
