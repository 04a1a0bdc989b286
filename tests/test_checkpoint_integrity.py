"""Checkpoints that can be trusted: each records its files' sizes and SHA-256; "latest" skips a damaged
one with a warning and resumes, bit for bit, from the newest complete one."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import adapter_tensors, common_args, train_in_process

from altadapter.training.checkpoints import (
    INFO_FILE,
    CheckpointError,
    checkpoint_problem,
    find_resume_checkpoint,
    list_checkpoints,
)


def mlp_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return common_args(data, model, out, "run", "--num_layers", "1", "--num_threads", "1", *extra)


@pytest.fixture(scope="module")
def finished_run(colour_dataset, tiny_model_dir, tmp_path_factory) -> Path:
    """A 4-step run's folder: checkpoint-2, checkpoint-4 and run.safetensors. Copy it before changing it."""
    out = tmp_path_factory.mktemp("finished")
    train_in_process("mlp", mlp_args(colour_dataset, tiny_model_dir, out))
    return out / "run"


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_every_file_of_a_checkpoint_is_recorded_with_its_size_and_sha256(finished_run):
    folder = finished_run / "checkpoint-4"
    recorded = json.loads((folder / INFO_FILE).read_text())["files"]
    on_disk = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != INFO_FILE}
    assert set(recorded) == set(on_disk) and len(on_disk) >= 3  # adapter, optimizer, schedule, ...
    for name, data in on_disk.items():
        assert recorded[name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint_problem(folder) is None


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: truncate(f / "optimizer.bin"), "optimizer.bin has .* bytes, .* were written"),
        (lambda f: (f / "pytorch_model.bin").unlink(), "pytorch_model.bin is missing"),
        (lambda f: flip_a_byte(f / "pytorch_model.bin"), r"pytorch_model.bin differs .*\(SHA-256\)"),
        (lambda f: truncate(f / INFO_FILE), f"{INFO_FILE} is unreadable"),
    ],
    ids=["truncated", "missing", "changed", "unreadable-info"],
)
def test_latest_skips_a_damaged_checkpoint_with_a_warning_naming_it(damage, problem, run_dir, caplog):
    damage(run_dir / "checkpoint-4")
    assert checkpoint_problem(run_dir / "checkpoint-4") is not None
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(run_dir, "latest") == run_dir / "checkpoint-2"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"skipping {run_dir / 'checkpoint-4'}, incomplete or corrupt: ")
    assert re.search(problem, warning)
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        find_resume_checkpoint(run_dir, str(run_dir / "checkpoint-4"))


def test_a_checkpoint_written_before_files_were_recorded_still_resumes(run_dir):
    info_file = run_dir / "checkpoint-4" / INFO_FILE
    info = json.loads(info_file.read_text())
    del info["files"]
    info_file.write_text(json.dumps(info))
    assert find_resume_checkpoint(run_dir, "latest") == run_dir / "checkpoint-4"


def test_an_unrenamed_tmp_folder_is_not_a_checkpoint(run_dir):
    shutil.copytree(run_dir / "checkpoint-4", run_dir / "checkpoint-6.tmp")  # killed just before the rename
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before_bit_for_bit(
    finished_run, run_dir, colour_dataset, tiny_model_dir, caplog
):
    truncate(run_dir / "checkpoint-4" / "pytorch_model.bin")
    (run_dir / "run.safetensors").unlink()
    argv = mlp_args(colour_dataset, tiny_model_dir, run_dir.parent, "--resume_from_checkpoint", "latest")
    with caplog.at_level(logging.INFO):
        resumed = train_in_process("mlp", argv)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"skipping {run_dir / 'checkpoint-4'}, incomplete or corrupt") for m in messages)
    assert f"resumed from {run_dir / 'checkpoint-2'} at step 2" in messages
    for name, tensor in adapter_tensors(finished_run / "run.safetensors").items():
        assert torch.equal(adapter_tensors(resumed)[name], tensor), name
    assert checkpoint_problem(run_dir / "checkpoint-4") is None  # written again, whole
