"""A run fixes its CPU thread count and records it in its checkpoints; a resume takes the recorded one.

Why it matters: a CPU reduction split over N threads adds its partial sums in an order that depends on N,
so a resume is bit for bit the uninterrupted run only with the same count (`setup.pin_threads`).
"""

from __future__ import annotations

import json
import logging

import torch
from training_helpers import common_args, train_in_process

from altadapter.adapter_io import read_adapter_file
from altadapter.training import loop


def test_a_resume_runs_with_the_thread_count_its_checkpoint_recorded(
    colour_dataset, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    before = torch.get_num_threads()
    argv = common_args(colour_dataset, tiny_model_dir, tmp_path, "run", "--num_layers", "1")
    train_in_process("mlp", [*argv, "--max_train_steps", "2", "--num_threads", "3"])
    assert json.loads((tmp_path / "run" / "checkpoint-2" / "checkpoint.json").read_text())["num_threads"] == 3
    assert torch.get_num_threads() == before  # a run in a library call leaves the caller's count

    seen = []
    real_step = loop.training_step
    monkeypatch.setattr(
        loop, "training_step", lambda *a: seen.append(torch.get_num_threads()) or real_step(*a)
    )
    resumed = train_in_process("mlp", [*argv, "--resume_from_checkpoint", "latest"])
    assert seen == [3, 3] and read_adapter_file(resumed)[1].extra["num_threads"] == 3

    with caplog.at_level(logging.WARNING):
        more = ["--max_train_steps", "6", "--resume_from_checkpoint", "latest", "--num_threads", "1"]
        train_in_process("mlp", [*argv, *more])
    assert any("trained with 3, so the resumed run will not match" in r.getMessage() for r in caplog.records)
