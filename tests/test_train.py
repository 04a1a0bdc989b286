"""The one training loop of all scripts: the write-up's flags, caching, checkpoints and bad configurations.

What every adapter kind must do in training (learn, resume exactly, leave the base alone) is in
`test_kind_contract.py`; this file tests the loop around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from script_helpers import run_as_main
from training_helpers import (
    adapter_tensors,
    common_args,
    kind_script,
    parse_training_args,
    train_in_process,
)

import train_adapter
from altadapter.adapter_io import read_adapter_file
from altadapter.adapters import get_kind, kind_names
from altadapter.testing.tiny_models import PRESETS, build_model_dir
from altadapter.training.batches import batch_indices
from altadapter.training.checkpoints import CheckpointError, check_checkpoint_kind

# The write-up's two scripts with its flags (batch sizes, precision, names), scaled down to a tiny model.
WRITE_UP_RUNS = {
    "text_encoder_util_mlp_transfer.py": [
        "--batch_size",
        "3",
        "--mixed_precision",
        "no",
        "--num_layers",
        "1",
    ],
    "text_encoder_util.py": ["--batch_size", "6", "--mixed_precision", "bf16", "--num_prompts", "4"],
}


def mlp_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return common_args(data, model, out, "altm9-single-layer", "--num_layers", "1", *extra)


@pytest.mark.parametrize("script", list(WRITE_UP_RUNS))
def test_the_write_ups_scripts_run_end_to_end_with_its_flags(
    script, colour_dataset, tiny_model_dir, tmp_path
):
    argv = [*common_args(colour_dataset, tiny_model_dir, tmp_path, "run"), *WRITE_UP_RUNS[script]]
    assert run_as_main(script, *argv) == 0
    tensors, metadata = read_adapter_file(tmp_path / "run" / "run.safetensors")
    assert get_kind(metadata.kind).train_command == script and metadata.step == 4
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_batches_cover_every_image_once_per_epoch():
    seen = torch.cat([batch_indices(0, step, process, 2, 3, 12) for step in range(2) for process in range(2)])
    assert sorted(seen.tolist()) == list(range(12))


def test_latent_cache_on_disk_is_reused(colour_dataset, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    first = train_in_process(
        "mlp", mlp_args(colour_dataset, tiny_model_dir, tmp_path / "a", "--cache_dir", str(cache))
    )
    entries = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(entries) == 8
    second = train_in_process(
        "mlp", mlp_args(colour_dataset, tiny_model_dir, tmp_path / "b", "--cache_dir", str(cache))
    )
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
    for name, tensor in adapter_tensors(first).items():
        assert torch.equal(adapter_tensors(second)[name], tensor)
    # Another dtype is another key: a bf16 run never reads fp32 latents.
    argv = mlp_args(colour_dataset, tiny_model_dir, tmp_path / "c", "--cache_dir", str(cache))
    train_in_process("mlp", [*argv, "--mixed_precision", "bf16"])
    assert len(list(cache.iterdir())) == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data_dir": "/nonexistent/data"}, "no such folder; run meta_file_converter.py first"),
        ({"--resolution": "36"}, "must be a positive multiple of 8"),
        ({"--num_prompts": "31"}, "use at most 30"),
    ],
)
def test_bad_configuration_fails_before_training(change, message, colour_dataset, tiny_model_dir, tmp_path):
    argv = common_args(colour_dataset, tiny_model_dir, tmp_path, "run", "--num_prompts", "4")
    for flag, value in change.items():
        argv[argv.index(flag) + 1] = value
    with pytest.raises(ValueError, match=message):
        train_in_process("prompt", argv)
    assert not (tmp_path / "run").exists()


def test_empty_dataset_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no captioned images"):
        train_in_process("mlp", mlp_args(tmp_path / "empty", tiny_model_dir, tmp_path))


def test_unreadable_images_only_are_refused(tiny_model_dir, tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "a.png").write_bytes(b"")
    (data / "a.txt").write_text("red hair")
    with pytest.raises(ValueError, match="no image of the dataset could be read"):
        train_in_process("mlp", mlp_args(data, tiny_model_dir, tmp_path))


def test_resume_of_the_other_kind_or_another_base_is_refused(colour_dataset, tiny_model_dir, tmp_path):
    train_in_process("mlp", mlp_args(colour_dataset, tiny_model_dir, tmp_path))
    checkpoint = str(tmp_path / "altm9-single-layer" / "checkpoint-4")
    prompt_args = common_args(colour_dataset, tiny_model_dir, tmp_path / "p", "p", "--num_prompts", "4")
    with pytest.raises(
        CheckpointError, match="holds a mlp adapter; resume it with text_encoder_util_mlp_transfer.py"
    ):
        train_in_process("prompt", [*prompt_args, "--resume_from_checkpoint", checkpoint])
    other = build_model_dir(tmp_path / "other-base", PRESETS["tiny"], seed=3)
    with pytest.raises(CheckpointError, match="trained on another base"):
        train_in_process(
            "mlp", mlp_args(colour_dataset, other, tmp_path / "o", "--resume_from_checkpoint", checkpoint)
        )


@pytest.mark.parametrize("kind", kind_names())
def test_a_checkpoint_of_another_kind_names_the_command_that_resumes_it(kind, tmp_path):
    other = next(name for name in kind_names() if name != kind)
    with pytest.raises(
        CheckpointError, match=f"holds a {kind} adapter; resume it with {get_kind(kind).train_command}"
    ):
        check_checkpoint_kind(tmp_path, {"kind": kind, "config": {}}, other)


def test_checkpoint_info_records_kind_and_base(colour_dataset, tiny_model_dir, tiny_base, tmp_path):
    train_in_process(
        "mlp", mlp_args(colour_dataset, tiny_model_dir, tmp_path, "--checkpoints_total_limit", "1")
    )
    checkpoints = list((tmp_path / "altm9-single-layer").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-4"]
    info = json.loads((checkpoints[0] / "checkpoint.json").read_text())
    assert (
        info["kind"] == "mlp" and info["step"] == 4 and info["base_fingerprint"] == tiny_base.info.fingerprint
    )


def test_validation_prompts_render_tuned_and_original_samples(colour_dataset, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1girl, solo, red hair\nblue hair, dress\n", encoding="utf-8")
    argv = mlp_args(colour_dataset, tiny_model_dir, tmp_path, "--validation_prompts", str(prompts))
    train_in_process("mlp", [*argv, "--validation_steps", "2", "--validation_inference_steps", "2"])
    for step in (2, 4):
        names = sorted(
            p.name for p in (tmp_path / "altm9-single-layer" / "samples" / f"step-{step}").iterdir()
        )
        assert "grid_1_with_samples_2_with_steps_2.png" in names
        assert "grid_1_with_samples_2_with_steps_2_original.png" in names


@pytest.mark.parametrize("kind", kind_names())
def test_diffusers_flag_names_are_aliases_of_the_write_ups(kind, colour_dataset, tiny_model_dir, tmp_path):
    writeup = ["--data_dir", str(colour_dataset), "--model_path", str(tiny_model_dir)]
    writeup += ["--ckpt_dir", str(tmp_path), "--batch_size", "3"]
    diffusers_names = ["--train_data_dir", str(colour_dataset)]
    diffusers_names += ["--pretrained_model_name_or_path", str(tiny_model_dir)]
    diffusers_names += ["--output_dir", str(tmp_path), "--train_batch_size", "3"]
    assert vars(parse_training_args(kind, diffusers_names)) == vars(parse_training_args(kind, writeup))


@pytest.mark.parametrize("kind", kind_names())
def test_train_adapter_takes_each_kind_with_its_own_scripts_flags(kind, colour_dataset):
    argv = ["--data_dir", str(colour_dataset), "--learning_rate", "0.5"]
    ours = vars(train_adapter.parse_args([*argv, "--kind", kind]))
    assert ours.pop("kind") == kind
    theirs = vars(parse_training_args(kind, argv))
    theirs.pop("kind", None)
    assert ours == theirs
    assert kind_script(kind)[0].is_file()
