"""Resumable checkpoints: accelerate's state saving, made atomic, verifiable, rotated, and checked before
resuming.

A checkpoint folder is written as `checkpoint-N.tmp` and renamed to `checkpoint-N` only when complete,
so a run killed at any moment (kill -9 included) leaves either a whole checkpoint or an ignored `.tmp`.
Its `checkpoint.json`, written last, records the size and SHA-256 of every other file, so a folder
damaged afterwards (a truncated copy, a lost file) is recognised: "latest" skips it with a warning and
takes the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from altadapter.adapters import get_kind
from altadapter.fileio import atomic_write

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
    accelerator: Accelerator, run_dir: Path, step: int, info: dict, *, total_limit: int | None
) -> Path:
    """Save the full training state as `run_dir/checkpoint-step` atomically; keep the newest `total_limit`."""
    final = run_dir / f"checkpoint-{step}"
    if accelerator.is_main_process:
        write_checkpoint(accelerator, final, {**info, "step": step})
        if total_limit is not None:
            for old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def write_checkpoint(accelerator: Accelerator, final: Path, info: dict) -> None:
    """Write the folder as `final.tmp`, record its files in `checkpoint.json`, rename it to `final`."""
    tmp = final.with_name(f"{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # torch.save for every file, not safetensors: safetensors' writer can drop a failed last write
    # without an error, and the short file it leaves would be recorded here as complete.
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
