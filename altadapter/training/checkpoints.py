"""Resumable checkpoints: accelerate's state saving, made atomic, verifiable, rotated, and checked before
resuming.

A checkpoint folder is written as `checkpoint-N.tmp` and renamed to `checkpoint-N` only when complete,
so a run killed at any moment (kill -9 included) leaves either a whole checkpoint or an ignored `.tmp`.
Its `checkpoint.json`, written last, records the size and SHA-256 of every other file, so a folder
damaged afterwards (a truncated copy, a lost file) is recognised: "latest" skips it with a warning and
takes the newest complete one. A write that fails (a full disk) removes the `.tmp` and stops the run with
an OutputError; the checkpoints before it stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import Accelerator

from altadapter.adapters import get_kind
from altadapter.errors import OutputError
from altadapter.fileio import atomic_write, describe_write_failure
from altadapter.training.processes import write_on_main_process

logger = logging.getLogger(__name__)
INFO_FILE = "checkpoint.json"
_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed by this run."""


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run (renamed, so written to the end once), oldest first."""
    found = [
        path
        for path in run_dir.glob("checkpoint-*")
        if _NAME.fullmatch(path.name) and path.is_dir() and (path / INFO_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_resume_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The folder `--resume_from_checkpoint` names: "latest" in this run, or an explicit path."""
    if resume is None:
        return None
    if resume == "latest":
        for path in reversed(list_checkpoints(run_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            logger.warning("skipping %s, incomplete or corrupt: %s", path, problem)
        logger.info("no complete checkpoint in %s yet: starting a new run", run_dir)
        return None
    path = Path(resume)
    if not (path / INFO_FILE).is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume}: not a complete checkpoint folder (no {INFO_FILE})"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"--resume_from_checkpoint {resume}: incomplete or corrupt: {problem}")
    return path


def checkpoint_problem(path: Path) -> str | None:
    """What makes a checkpoint folder unusable, or None when every file it recorded is as written.

    Folders written before files were recorded have nothing to compare and count as complete.
    """
    try:
        recorded = read_checkpoint_info(path).get("files", {})
    except (OSError, ValueError) as error:
        return f"{INFO_FILE} is unreadable ({error})"
    for name, expected in recorded.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size:,} bytes, {expected['size']:,} were written"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} differs from what was written (SHA-256)"
    return None


def file_sha256(path: Path, *, sync: bool = False) -> str:
    """The SHA-256 of a file's bytes; with `sync`, the file is also flushed to the disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def read_checkpoint_info(path: Path) -> dict:
    """The step, adapter kind and config, and base fingerprint a checkpoint was saved with."""
    return json.loads((path / INFO_FILE).read_text(encoding="utf-8"))


def check_checkpoint_kind(path: Path, info: dict, kind: str, config: dict | None = None) -> None:
    """Refuse a checkpoint of the other adapter kind (or other hyperparameters)."""
    if info["kind"] != kind:
        raise CheckpointError(
            f"{path} holds a {info['kind']} adapter; resume it with {get_kind(info['kind']).train_command}, "
            f"or pass another --name / --ckpt_dir for a new {kind} run"
        )
    if config is not None and info["config"] != config:
        raise CheckpointError(f"{path} was trained with {info['config']}, this run asks for {config}")


def check_checkpoint_base(path: Path, info: dict, fingerprint: str, *, allow_other_base: bool) -> None:
    """Refuse a checkpoint trained on another base."""
    if info["base_fingerprint"] != fingerprint and not allow_other_base:
        raise CheckpointError(
            f"{path} was trained on another base (fingerprint {info['base_fingerprint']}, this one is "
            f"{fingerprint}); pass the same --model_path, or --allow_other_base"
        )


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    info: dict,
    *,
    total_limit: int | None,
    size_hint: int,
) -> Path:
    """Save the full training state as `run_dir/checkpoint-step` atomically; keep the newest `total_limit`.

    `size_hint` (the bytes of the tensors it holds) is what a failed first checkpoint says it needs.
    """
    final = run_dir / f"checkpoint-{step}"

    def write() -> None:
        previous = list_checkpoints(run_dir)
        write_checkpoint(accelerator, final, {**info, "step": step}, size_hint, previous)
        if total_limit is not None:
            for old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old)

    write_on_main_process(accelerator, write)
    return final


def write_checkpoint(
    accelerator: Accelerator, final: Path, info: dict, size_hint: int, previous: list[Path]
) -> None:
    """Write the folder as `final.tmp`, record its files in `checkpoint.json`, rename it to `final`."""
    tmp = final.with_name(f"{final.name}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        # torch.save for every file, not safetensors: safetensors' writer can drop a failed last write
        # without an error, and a full disk would then leave a short file that looks complete.
        accelerator.save_state(str(tmp), safe_serialization=False)
        files = {
            file.relative_to(tmp).as_posix(): {
                "size": file.stat().st_size,
                "sha256": file_sha256(file, sync=True),
            }
            for file in sorted(tmp.rglob("*"))
            if file.is_file()
        }
        with atomic_write(tmp / INFO_FILE) as handle:
            json.dump({**info, "files": files}, handle, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f" (from {previous[-1]}, left as it was)" if previous else ""
        # As much as the checkpoint before it (the same tensors, files and headers), else its tensors.
        needed = (
            sum(p.stat().st_size for p in previous[-1].rglob("*") if p.is_file()) if previous else size_hint
        )
        raise OutputError(
            describe_write_failure(final, needed, error, about=True)
            + f"; free space or pass another --ckpt_dir, then resume with --resume_from_checkpoint latest{kept}"
        ) from error


def tensor_bytes(*states: Mapping) -> int:
    """Bytes of the tensors in (nested) state dicts: the bulk of a checkpoint of them (its files add
    headers and the random generators' states, some tens of KB)."""

    def size(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return value.nbytes
        if isinstance(value, Mapping):
            return sum(size(item) for item in value.values())
        if isinstance(value, list | tuple):
            return sum(size(item) for item in value)
        return 0

    return sum(size(state) for state in states)
