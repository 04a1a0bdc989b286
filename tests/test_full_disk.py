"""A full disk or a read-only folder: the run stops with one line naming the file and the bytes it
needed, exit status 1, and every file written before stays whole (simulated failing writes)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import re
from pathlib import Path

import accelerate.checkpointing
import pytest
from accelerate.state import AcceleratorState
from training_helpers import common_args, train_in_process

from altadapter import fileio
from altadapter.adapter_io import read_adapter_file
from altadapter.errors import OutputError
from altadapter.testing.tiny_models import PRESETS
from altadapter.training.checkpoints import checkpoint_problem, list_checkpoints

NO_SPACE = os.strerror(errno.ENOSPC)


class FailingDisk:
    """A file handle whose write stops halfway with `error` (ENOSPC: the disk filled up)."""

    def __init__(self, handle, error: int) -> None:
        self.handle, self.error = handle, error
        self.asked = 0

    def write(self, data: bytes) -> int:
        self.asked += len(data)
        self.handle.write(data[: len(data) // 2])
        raise OSError(self.error, os.strerror(self.error))


def fail_when_writing(monkeypatch, name: str, error: int = errno.ENOSPC) -> list[int]:
    """Make fileio's atomic writes of files called `name` fail; returns the sizes they were asked."""
    real = fileio.atomic_write
    asked: list[int] = []

    @contextlib.contextmanager
    def atomic_write(path, mode="w", encoding="utf-8"):
        with real(path, mode, encoding) as handle:
            if Path(path).name != name:
                yield handle
                return
            disk = FailingDisk(handle, error)
            try:
                yield disk
            finally:
                asked.append(disk.asked)

    monkeypatch.setattr(fileio, "atomic_write", atomic_write)
    return asked


def run_script_main(argv: list[str]) -> int:
    """The MLP training script's `main` in this process; returns the status it exits with."""
    module = importlib.import_module("text_encoder_util_mlp_transfer")
    try:
        with pytest.raises(SystemExit) as exited:
            module.main(module.parse_args(argv))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return exited.value.code


def error_line(stderr: str) -> str:
    """The one `error:` line of a script's stderr, with no traceback beside it."""
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def needed_bytes(line: str) -> int:
    return int(re.search(r"it needs (?:about )?([\d,]+) bytes", line).group(1).replace(",", ""))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_names_the_file_and_its_size_and_keeps_the_old_one(error, tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    fail_when_writing(monkeypatch, "a.bin", error)
    with pytest.raises(
        OutputError, match=rf"could not write {path} \({os.strerror(error)}\): it needs 1,000 bytes"
    ):
        fileio.write_bytes(path, b"x" * 1000)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def mlp_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return common_args(data, model, out, "run", "--num_layers", "1", "--num_threads", "1", *extra)


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, NO_SPACE),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
    ],
    ids=["oserror", "torch-save-runtimeerror"],  # how torch.save itself reports a full disk
)
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_one_before(
    failure, colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    real_save = accelerate.checkpointing.save

    def save(obj, file, *args, **kwargs):
        if Path(file).parent.name == "checkpoint-4.tmp":
            Path(file).write_bytes(b"half a file")
            raise failure
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", save)
    argv = mlp_args(colour_dataset, tiny_model_dir, tmp_path, "--max_train_steps", "6")
    assert run_script_main(argv) == 1
    run_dir = tmp_path / "run"
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: could not write {run_dir / 'checkpoint-4'} (")
    assert line.endswith(f"--resume_from_checkpoint latest (from {run_dir / 'checkpoint-2'}, left as it was)")
    # As much as the checkpoint before it: the same tensors in the same files.
    assert needed_bytes(line) == sum(p.stat().st_size for p in (run_dir / "checkpoint-2").iterdir())
    assert [p.name for p in run_dir.iterdir()] == ["checkpoint-2"]  # no .tmp, no adapter
    assert checkpoint_problem(run_dir / "checkpoint-2") is None

    monkeypatch.undo()
    resumed = train_in_process("mlp", [*argv, "--resume_from_checkpoint", "latest"])
    assert read_adapter_file(resumed)[1].step == 6


def test_a_first_checkpoint_that_cannot_be_written_names_the_bytes_of_its_tensors(
    colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    def save(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(accelerate.checkpointing, "save", save)
    assert run_script_main(mlp_args(colour_dataset, tiny_model_dir, tmp_path)) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: could not write {tmp_path / 'run' / 'checkpoint-2'} ({NO_SPACE}): it needs about "
    )
    # The adapter's one D x D Linear and its bias, AdamW's two moments of each and step count of each (fp32).
    width = PRESETS["tiny"].project_dim
    assert needed_bytes(line) == 3 * (width * width + width) * 4 + 2 * 4
    assert list((tmp_path / "run").iterdir()) == []


def test_a_final_adapter_that_cannot_be_written_leaves_the_earlier_one_whole(
    colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    argv = mlp_args(colour_dataset, tiny_model_dir, tmp_path)
    train_in_process("mlp", [*argv, "--max_train_steps", "2"])
    run_dir = tmp_path / "run"
    earlier = (run_dir / "run.safetensors").read_bytes()

    asked = fail_when_writing(monkeypatch, "run.safetensors")
    assert run_script_main([*argv, "--resume_from_checkpoint", "latest"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: could not write {run_dir / 'run.safetensors'} ({NO_SPACE}): it needs ")
    assert needed_bytes(line) == asked[0] > 0  # exactly the file it was writing
    assert (run_dir / "run.safetensors").read_bytes() == earlier
    assert read_adapter_file(run_dir / "run.safetensors")[1].step == 2
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint_problem(run_dir / "checkpoint-4") is None
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
