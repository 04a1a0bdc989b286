"""Resumable checkpoints: accelerate's state saving, made atomic, rotated, and checked before resuming.

A checkpoint folder is written as `checkpoint-N.tmp` and renamed to `checkpoint-N` only when complete,
so a run killed at any moment (kill -9 included) leaves either a whole checkpoint or an ignored `.tmp`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from accelerate import Accelerator

from altadapter.adapters import get_kind
from altadapter.fileio import atomic_write

logger = logging.getLogger(__name__)
INFO_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed by this run."""


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_resume_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The folder `--resume_from_checkpoint` names: "latest" in this run, or an explicit path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            logger.info("no checkpoint in %s yet: starting a new run", run_dir)
            return None
        return found[-1]
    path = Path(resume)
    if not (path / INFO_FILE).is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume}: not a complete checkpoint folder (no {INFO_FILE})"
        )
    return path


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
    tmp = run_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp))
        with atomic_write(tmp / INFO_FILE) as handle:
            json.dump({**info, "step": step}, handle, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit is not None:
            for old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
