"""The one training loop of all scripts: learning, caching, exact resume, precision and bad configurations."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesModelWithTransformation,
)
from PIL import Image
from safetensors.torch import load_file

import text_encoder_util
import text_encoder_util_mlp_transfer
import train_adapter
from altadapter.adapter_io import read_adapter_file
from altadapter.tiny_models import PRESETS, build_model_dir
from altadapter.training import loop as train_module
from altadapter.training.batches import batch_indices
from altadapter.training.checkpoints import CheckpointError, check_checkpoint_kind
from altadapter.training.loop import train

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
SCRIPTS = {
    "mlp": text_encoder_util_mlp_transfer,
    "prompt": text_encoder_util,
    "vocab": train_adapter,
    "lora": train_adapter,
}
NAMES = {
    "mlp": "altm9-single-layer",
    "prompt": "altm9-prompt-embedding",
    "vocab": "tiny-vocab",
    "lora": "tiny-lora",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Eight flat-colour images whose captions name the colour: learnable in a few steps."""
    folder = tmp_path_factory.mktemp("data")
    for index in range(8):
        name = list(COLOURS)[index % len(COLOURS)]
        Image.new("RGB", (40 + index, 48), COLOURS[name]).save(folder / f"img{index}.png")  # distinct bytes
        (folder / f"img{index}.txt").write_text(f"1girl, solo, {name} hair, dress", encoding="utf-8")
    return folder


def run_args(kind: str, data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """The write-up's flags (batch sizes, precision, names), scaled down to a tiny model."""
    common = ["--data_dir", str(data), "--model_path", str(model), "--ckpt_dir", str(out), "--allow_tf32"]
    common += [
        "--resolution",
        "32",
        "--report_to",
        "none",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
    ]
    if kind == "mlp":
        specific = ["--batch_size", "3", "--mixed_precision", "no", "--num_layers", "1"]
    elif kind == "prompt":
        specific = ["--batch_size", "6", "--mixed_precision", "bf16", "--num_prompts", "4"]
    elif kind == "vocab":  # the dataset's 7 tags, 2 vectors each
        specific = [
            "--kind",
            "vocab",
            "--batch_size",
            "6",
            "--mixed_precision",
            "bf16",
            "--vectors_per_tag",
            "2",
        ]
    else:
        specific = ["--kind", "lora", "--batch_size", "3", "--mixed_precision", "bf16", "--rank", "2"]
    return [*common, *specific, "--name", NAMES[kind], *extra]


def train_in_process(kind: str, *argv: str) -> Path:
    """Run a training script's main path in this process, as a fresh process would (own accelerate state)."""
    try:
        return train(SCRIPTS[kind].parse_args(list(argv)), kind)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def state_checksum(module: torch.nn.Module) -> str:
    """A hash of the module's own weights, under their own names; LoRA weights peft injected left out."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" not in name:
            digest.update(name.replace(".base_layer", "").encode() + tensor.float().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("kind", ["mlp", "prompt", "vocab", "lora"])
def test_script_runs_end_to_end_with_the_write_ups_flags(kind, dataset, tiny_model_dir, tmp_path):
    """The MLP as the write-up ran it (fp32, batch 3); the prompt adapter in bf16 at batch 6; the new
    kinds through train_adapter.py, in bf16."""
    script = REPO / f"{SCRIPTS[kind].__name__}.py"
    result = subprocess.run(
        [sys.executable, str(script), *run_args(kind, dataset, tiny_model_dir, tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name = NAMES[kind]
    tensors, metadata = read_adapter_file(tmp_path / name / f"{name}.safetensors")
    assert metadata.kind == kind and metadata.step == 4
    assert sorted(p.name for p in (tmp_path / name).glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all(torch.isfinite(t).all() for t in tensors.values())
    if kind == "vocab":  # every tag of the dataset, most frequent first, stored beside its vectors
        assert metadata.config["tags"][:3] == ["1girl", "dress", "solo"] and len(metadata.config["tags"]) == 7
        assert tensors["embeddings"].shape == (14, 32)
    if kind == "lora":  # only the LoRA tensors, under peft's names; B has left zero
        assert len(tensors) == 2 * 4 * 2 and metadata.config["rank"] == 2
        assert tensors["roberta.encoder.layer.1.attention.output.dense.lora_B.weight"].abs().sum() > 0


@pytest.mark.parametrize("kind", ["mlp", "prompt", "vocab", "lora"])
def test_adapter_learns_a_small_overfit_set(kind, dataset, tiny_model_dir, tmp_path):
    args = run_args(kind, dataset, tiny_model_dir, tmp_path, "--validation_dir", str(dataset))
    args += ["--max_train_steps", "30", "--learning_rate", "3e-3", "--validation_steps", "30"]
    args += ["--mixed_precision", "no", "--checkpointing_steps", "100"]
    _, metadata = read_adapter_file(train_in_process(kind, *args))
    assert metadata.extra["val_loss_adapter"] < metadata.extra["val_loss_original"]


def encoder_calls(kind: str, steps: str, dataset: Path, model: Path, out: Path, monkeypatch) -> int:
    """How often a training run calls the text encoder's forward."""
    calls = []
    forward = RobertaSeriesModelWithTransformation.forward
    monkeypatch.setattr(
        RobertaSeriesModelWithTransformation,
        "forward",
        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k),
    )
    train_in_process(kind, *run_args(kind, dataset, model, out), "--max_train_steps", steps)
    return len(calls)


def test_mlp_training_never_runs_the_text_encoder_per_step(dataset, tiny_model_dir, tmp_path, monkeypatch):
    two, six = (
        encoder_calls("mlp", s, dataset, tiny_model_dir, tmp_path / s, monkeypatch) for s in ("2", "6")
    )
    assert two == six > 0  # only the one-off caption cache, however many steps


@pytest.mark.parametrize("kind", ["prompt", "vocab", "lora"])
def test_training_runs_the_encoder_every_step_for_adapters_in_it(
    kind, dataset, tiny_model_dir, tmp_path, monkeypatch
):
    two, six = (
        encoder_calls(kind, s, dataset, tiny_model_dir, tmp_path / s, monkeypatch) for s in ("2", "6")
    )
    assert six - two == 4


@pytest.mark.parametrize("kind", ["prompt", "vocab", "lora"])
def test_base_weights_are_unchanged_by_training(kind, dataset, tiny_model_dir, tmp_path, monkeypatch):
    loaded = []
    real_load = train_module.load_base
    monkeypatch.setattr(
        train_module, "load_base", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1]
    )
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_model_dir.rglob("*.safetensors")}
    trained = train_in_process(
        kind, *run_args(kind, dataset, tiny_model_dir, tmp_path), "--mixed_precision", "no"
    )
    fresh = real_load(tiny_model_dir)
    for name in ("text_encoder", "unet", "vae"):
        assert state_checksum(getattr(loaded[0], name)) == state_checksum(getattr(fresh, name))
    if kind == "lora":  # what trained are the LoRA weights, and they are all the encoder gained
        lora = [name for name in loaded[0].text_encoder.state_dict() if "lora_" in name]
        saved = adapter_tensors(trained)
        assert len(lora) == len(saved) == 2 * 4 * 2
        assert all(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)
    assert before == {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_model_dir.rglob("*.safetensors")
    }


def test_batches_cover_every_image_once_per_epoch():
    seen = torch.cat([batch_indices(0, step, process, 2, 3, 12) for step in range(2) for process in range(2)])
    assert sorted(seen.tolist()) == list(range(12))


def test_latent_cache_on_disk_is_reused(dataset, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    first = train_in_process(
        "mlp", *run_args("mlp", dataset, tiny_model_dir, tmp_path / "a"), "--cache_dir", str(cache)
    )
    entries = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(entries) == 8
    second = train_in_process(
        "mlp", *run_args("mlp", dataset, tiny_model_dir, tmp_path / "b"), "--cache_dir", str(cache)
    )
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
    for name, tensor in adapter_tensors(first).items():
        assert torch.equal(adapter_tensors(second)[name], tensor)
    # Another dtype is another key: a bf16 run never reads fp32 latents.
    train_in_process(
        "mlp",
        *run_args("mlp", dataset, tiny_model_dir, tmp_path / "c"),
        "--cache_dir",
        str(cache),
        "--mixed_precision",
        "bf16",
    )
    assert len(list(cache.iterdir())) == 16


@pytest.mark.parametrize("kind", ["mlp", "vocab", "lora"])
def test_killed_run_resumes_to_the_same_adapter_bit_for_bit(kind, dataset, tiny_model_dir, tmp_path):
    steps = [
        "--max_train_steps",
        "8",
        "--checkpointing_steps",
        "2",
        "--random_flip",
        "--preserve_weight",
        "0.5",
    ]
    reference = train_in_process(kind, *run_args(kind, dataset, tiny_model_dir, tmp_path / "whole"), *steps)

    argv = run_args(kind, dataset, tiny_model_dir, tmp_path / "killed", *steps)
    script = REPO / f"{SCRIPTS[kind].__name__}.py"
    process = subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "killed" / NAMES[kind]
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint-4").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / f"{NAMES[kind]}.safetensors").exists(), "killed too late to test resuming"

    resumed = train_in_process(kind, *argv, "--resume_from_checkpoint", "latest")
    for name, tensor in adapter_tensors(reference).items():
        assert torch.equal(adapter_tensors(resumed)[name], tensor), name


def free_port() -> int:
    """A TCP port nobody listens on now, so two test runs on one machine never meet at a fixed port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", ["prompt", "lora"])
def test_two_process_torchrun_writes_one_identical_adapter(kind, dataset, tiny_model_dir, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command += [
        str(REPO / f"{SCRIPTS[kind].__name__}.py"),
        *run_args(kind, dataset, tiny_model_dir, tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = {
        line.split("adapter ")[1].split()[0] for line in result.stderr.splitlines() if "on process" in line
    }
    processes = {line.split("on process ")[1] for line in result.stderr.splitlines() if "on process" in line}
    assert processes == {"0", "1"} and len(digests) == 1
    assert [p.name for p in (tmp_path / NAMES[kind]).glob("*.safetensors")] == [f"{NAMES[kind]}.safetensors"]


def write_dataset_of_broken_files(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "a.txt").write_text("red hair")
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data_dir": "/nonexistent/data"}, "no such folder; run meta_file_converter.py first"),
        ({"--resolution": "36"}, "must be a positive multiple of 8"),
        ({"--num_prompts": "31"}, "use at most 30"),
    ],
)
def test_bad_configuration_fails_before_training(change, message, dataset, tiny_model_dir, tmp_path):
    argv = run_args("prompt", dataset, tiny_model_dir, tmp_path)
    for flag, value in change.items():
        argv[argv.index(flag) + 1] = value
    with pytest.raises(ValueError, match=message):
        train_in_process("prompt", *argv)
    assert not (tmp_path / "altm9-prompt-embedding").exists()


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("vocab", ["--tags", "/nonexistent/tags.txt"], "--tags /nonexistent/tags.txt: no such file"),
        ("vocab", ["--vectors_per_tag", "0"], "--vectors_per_tag must be at least 1"),
        ("lora", ["--rank", "0"], "--rank must be at least 1"),
        ("lora", ["--lora_alpha", "-1"], "--lora_alpha must be positive"),
        ("lora", ["--lora_targets", "query", "query"], "names a projection twice"),
    ],
)
def test_bad_new_kind_configuration_fails_before_training(
    kind, extra, message, dataset, tiny_model_dir, tmp_path
):
    with pytest.raises(ValueError, match=message):
        train_in_process(kind, *run_args(kind, dataset, tiny_model_dir, tmp_path, *extra))
    assert not (tmp_path / NAMES[kind]).exists()


def test_vocab_learns_the_tags_of_a_tags_file(dataset, tiny_model_dir, tmp_path):
    tags = tmp_path / "tags.txt"
    tags.write_text("red_hair\nblue hair, lappland\n", encoding="utf-8")
    argv = run_args("vocab", dataset, tiny_model_dir, tmp_path, "--tags", str(tags), "--max_train_steps", "1")
    _, metadata = read_adapter_file(train_in_process("vocab", *argv))
    assert metadata.config["tags"] == ["red hair", "blue hair", "lappland"]


def test_empty_dataset_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no captioned images"):
        train_in_process("mlp", *run_args("mlp", tmp_path / "empty", tiny_model_dir, tmp_path))


def test_unreadable_images_only_are_refused(tiny_model_dir, tmp_path):
    data = write_dataset_of_broken_files(tmp_path / "broken")
    with pytest.raises(ValueError, match="no image of the dataset could be read"):
        train_in_process("mlp", *run_args("mlp", data, tiny_model_dir, tmp_path))


def test_resume_of_the_other_kind_or_another_base_is_refused(dataset, tiny_model_dir, tmp_path):
    train_in_process("mlp", *run_args("mlp", dataset, tiny_model_dir, tmp_path), "--name", "run")
    checkpoint = str(tmp_path / "run" / "checkpoint-4")
    prompt_args = run_args(
        "prompt", dataset, tiny_model_dir, tmp_path / "p", "--resume_from_checkpoint", checkpoint
    )
    with pytest.raises(
        CheckpointError, match="holds a mlp adapter; resume it with text_encoder_util_mlp_transfer.py"
    ):
        train_in_process("prompt", *prompt_args)
    other = build_model_dir(tmp_path / "other-base", PRESETS["tiny"], seed=3)
    with pytest.raises(CheckpointError, match="trained on another base"):
        train_in_process(
            "mlp", *run_args("mlp", dataset, other, tmp_path / "o", "--resume_from_checkpoint", checkpoint)
        )


@pytest.mark.parametrize("kind", ["vocab", "lora"])
def test_a_checkpoint_of_a_new_kind_names_train_adapter_with_its_kind(kind, tmp_path):
    with pytest.raises(
        CheckpointError, match=f"holds a {kind} adapter; resume it with train_adapter.py --kind {kind}"
    ):
        check_checkpoint_kind(tmp_path, {"kind": kind, "config": {}}, "mlp")


def test_checkpoint_info_records_kind_and_base(dataset, tiny_model_dir, tiny_base, tmp_path):
    train_in_process(
        "mlp", *run_args("mlp", dataset, tiny_model_dir, tmp_path), "--checkpoints_total_limit", "1"
    )
    checkpoints = list((tmp_path / "altm9-single-layer").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-4"]
    info = json.loads((checkpoints[0] / "checkpoint.json").read_text())
    assert (
        info["kind"] == "mlp" and info["step"] == 4 and info["base_fingerprint"] == tiny_base.info.fingerprint
    )


def test_validation_prompts_render_tuned_and_original_samples(dataset, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1girl, solo, red hair\nblue hair, dress\n", encoding="utf-8")
    argv = run_args("mlp", dataset, tiny_model_dir, tmp_path, "--validation_prompts", str(prompts))
    train_in_process("mlp", *argv, "--validation_steps", "2", "--validation_inference_steps", "2")
    for step in (2, 4):
        names = sorted(
            p.name for p in (tmp_path / "altm9-single-layer" / "samples" / f"step-{step}").iterdir()
        )
        assert "grid_1_with_samples_2_with_steps_2.png" in names
        assert "grid_1_with_samples_2_with_steps_2_original.png" in names


def test_diffusers_flag_names_are_aliases_of_the_write_ups(dataset, tiny_model_dir, tmp_path):
    writeup = ["--data_dir", str(dataset), "--model_path", str(tiny_model_dir)]
    writeup += ["--ckpt_dir", str(tmp_path), "--batch_size", "3"]
    diffusers_names = [
        "--train_data_dir",
        str(dataset),
        "--pretrained_model_name_or_path",
        str(tiny_model_dir),
    ]
    diffusers_names += ["--output_dir", str(tmp_path), "--train_batch_size", "3"]
    for kind, script in SCRIPTS.items():
        chosen = ["--kind", kind] if script is train_adapter else []
        assert vars(script.parse_args([*diffusers_names, *chosen])) == vars(
            script.parse_args([*writeup, *chosen])
        )


def test_train_adapter_takes_each_kind_with_its_scripts_flags_and_refuses_the_others(dataset, capsys):
    for kind in ("mlp", "prompt"):
        argv = ["--data_dir", str(dataset), "--learning_rate", "0.5"]
        ours = vars(train_adapter.parse_args([*argv, "--kind", kind]))
        assert ours.pop("kind") == kind and ours == vars(SCRIPTS[kind].parse_args(argv))
    with pytest.raises(SystemExit):
        train_adapter.parse_args(["--data_dir", str(dataset), "--kind", "vocab", "--num_layers", "2"])
    assert "error: --num_layers is a flag of --kind mlp, not of --kind vocab" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_adapter.parse_args(["--data_dir", str(dataset), "--kind", "lora", "--init_text=a cat"])
    assert (
        "error: --init_text is a flag of --kind prompt / vocab, not of --kind lora" in capsys.readouterr().err
    )
