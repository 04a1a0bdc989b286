"""The contract every adapter kind keeps, run for each registered kind with its own default flags.

As PEFT's TEST_CASES drive its contract tests, the registry drives these: registering a kind puts it under
every test here (file round trip, refusal of another base, scale 0 = the original, gradients only into the
adapter, the encoder's calls, learning, the base untouched, refusal of other kinds' flags, two processes
ending with one adapter, a `datasets` source with kohya's caption flags). Exact resume after a stop, for
every kind in bf16, is in test_preemption.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesModelWithTransformation,
)
from PIL import Image
from training_helpers import (
    REPO,
    common_args,
    kind_script,
    parse_training_args,
    state_checksum,
    train_in_process,
)

from altadapter.adapter_io import AdapterFileError, load_adapter, read_adapter_file, save_adapter
from altadapter.adapters import get_kind, kind_names, kind_of
from altadapter.adapters.conditioning import encode_text
from altadapter.attach import attach_adapter, detach_adapter
from altadapter.model import AltDiffusionBase, load_base, make_pipeline
from altadapter.rendering.sampler import RenderSettings, image_seed, render_comparison
from altadapter.rendering.schedulers import make_scheduler
from altadapter.training import setup as train_module
from altadapter.training.args import own_flags, parse_kind_args

KINDS = kind_names()
PROMPTS = ["1girl, solo, red hair, dress", "a green cat, blue hair"]


def default_adapter(kind: str, base: AltDiffusionBase, data: Path) -> torch.nn.Module:
    """An adapter of `kind` built from its default flags, its weights moved off their (identity) init."""
    options = get_kind(kind).options(parse_training_args(kind, ["--data_dir", str(data)]))
    adapter = get_kind(kind).build(options, base, ["1girl, solo, red hair, dress", "blue hair"], seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapter


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_round_trip_keeps_the_weights_and_the_conditioning(kind, roomy_base, colour_dataset, tmp_path):
    adapter = default_adapter(kind, roomy_base, colour_dataset)
    path = save_adapter(tmp_path / "a.safetensors", adapter, roomy_base.info, step=3)
    loaded, metadata = load_adapter(path, roomy_base.info, expected_kind=kind)
    assert metadata.kind == kind and metadata.step == 3 and type(loaded) is type(adapter)
    assert loaded.state_dict().keys() == adapter.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
    assert torch.equal(encode_text(roomy_base, PROMPTS, loaded), encode_text(roomy_base, PROMPTS, adapter))


@pytest.mark.parametrize("kind", KINDS)
def test_a_base_of_other_dimensions_or_weights_is_refused(kind, roomy_base, colour_dataset, tmp_path):
    path = save_adapter(
        tmp_path / "a.safetensors", default_adapter(kind, roomy_base, colour_dataset), roomy_base.info
    )
    info = roomy_base.info
    wider = dataclasses.replace(
        info,
        hidden_size=2 * info.hidden_size,
        project_dim=2 * info.project_dim,
        num_layers=info.num_layers + 1,
    )
    with pytest.raises(AdapterFileError, match=f"this {kind} adapter .*pass that model as --model_path"):
        load_adapter(path, wider)
    retrained = dataclasses.replace(info, fingerprint="0123456789abcdef")
    with pytest.raises(AdapterFileError, match="weights differ.*--allow_other_base"):
        load_adapter(path, retrained)
    assert load_adapter(path, retrained, allow_other_base=True)[1].kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_the_other_kinds_scripts_and_a_truncated_file_are_refused(kind, roomy_base, colour_dataset, tmp_path):
    path = save_adapter(
        tmp_path / "a.safetensors", default_adapter(kind, roomy_base, colour_dataset), roomy_base.info
    )
    for other in KINDS:
        if other != kind:
            with pytest.raises(
                AdapterFileError,
                match=f"is a {kind} adapter, not a {other} adapter: render it with {get_kind(kind).render_command}",
            ):
                load_adapter(path, roomy_base.info, expected_kind=other)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AdapterFileError, match="not a readable .safetensors file.*truncated or corrupt"):
        load_adapter(path, roomy_base.info)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_zero_is_the_original_and_scale_one_the_tuned(kind, roomy_base, colour_dataset):
    adapter = default_adapter(kind, roomy_base, colour_dataset)
    original = encode_text(roomy_base, PROMPTS)
    tuned = encode_text(roomy_base, PROMPTS, adapter)
    assert not torch.allclose(tuned[:, : original.shape[1]], original, atol=1e-4)
    assert torch.equal(encode_text(roomy_base, PROMPTS, adapter, scale=0.0), original)
    assert torch.equal(encode_text(roomy_base, PROMPTS, adapter, scale=1.0), tuned)
    half = encode_text(roomy_base, PROMPTS, adapter, scale=0.5)
    torch.testing.assert_close(half[:, : original.shape[1]], ((original + tuned) / 2)[:, : original.shape[1]])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_adapter(kind, roomy_base, colour_dataset):
    adapter = default_adapter(kind, roomy_base, colour_dataset).train().requires_grad_(True)
    conditioning = encode_text(roomy_base, PROMPTS, adapter)
    latents = torch.randn(2, 4, 16, 16)
    noise = roomy_base.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=conditioning).sample
    noise.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    for module in (roomy_base.text_encoder, roomy_base.unet, roomy_base.vae):
        # LoRA adapters' own weights sit inside the encoder's injected layers; the base's stay frozen.
        frozen = [p for name, p in module.named_parameters() if "lora_" not in name]
        assert all(not p.requires_grad and p.grad is None for p in frozen)


@pytest.mark.parametrize("kind", KINDS)
def test_its_render_script_draws_it_beside_the_original(
    kind, roomy_model_dir, roomy_base, colour_dataset, tmp_path
):
    adapter = default_adapter(kind, roomy_base, colour_dataset)
    path = save_adapter(tmp_path / "a.safetensors", adapter, roomy_base.info)
    script = runpy.run_path(str(REPO / get_kind(kind).render_command), run_name="script_under_test")
    out = tmp_path / "images"
    argv = ["--model_path", str(roomy_model_dir), "--adapter", str(path), "--prompt", PROMPTS[0]]
    argv += [
        "--num_images",
        "1",
        "--num_inference_steps",
        "2",
        "--scheduler",
        "ddim",
        "--output_dir",
        str(out),
    ]
    script["main"](script["parse_args"](argv))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith(f"# {get_kind(kind).title} adapter: tuned and original, from the same noise")
    stem = out / "grid_0_with_samples_1_with_steps_2"
    with Image.open(f"{stem}.png") as tuned, Image.open(f"{stem}_original.png") as original:
        assert np.abs(np.asarray(tuned, dtype=np.int16) - np.asarray(original)).max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_attached_to_a_stock_pipeline_it_renders_as_the_renderer_and_detaches_to_the_original(
    kind, roomy_model_dir, colour_dataset, tmp_path
):
    base = load_base(roomy_model_dir)  # its own: the pipeline's text encoder must start as loaded
    keys = set(base.text_encoder.state_dict())
    adapter = default_adapter(kind, base, colour_dataset)
    path = save_adapter(tmp_path / "a.safetensors", adapter, base.info)
    settings = RenderSettings(
        num_images=2, num_inference_steps=3, scheduler="ddim", seed=0, negative_prompt="bad"
    )
    ours = render_comparison(base, adapter, PROMPTS[:1], settings=settings, progress=False)[0]
    pipe = make_pipeline(base, make_scheduler(base, "ddim"))
    pipe.set_progress_bar_config(disable=True)

    def stock_call() -> list:
        generators = [torch.Generator().manual_seed(image_seed(0, 0, j)) for j in range(2)]
        return pipe(
            PROMPTS[0],
            negative_prompt="bad",
            num_inference_steps=3,
            num_images_per_prompt=2,
            generator=generators,
        ).images

    # The renderer batches tuned and original rows its own way, so a reduction may round one level
    # apart from the stock call's batch on some CPUs; detaching is compared exactly, to the same call.
    before = stock_call()
    assert max_difference(before, ours.original) <= 1
    assert attach_adapter(pipe, path).kind == kind
    assert max_difference(stock_call(), ours.tuned[1.0]) <= 1
    detach_adapter(pipe)
    assert max_difference(stock_call(), before) == 0
    kind_of(adapter).detach(adapter, base)  # the renderer's use of the same adapter, taken back too
    assert set(base.text_encoder.state_dict()) == keys  # nothing of the adapter left in the encoder


def max_difference(first: list, second: list) -> int:
    """The largest difference of two lists of pictures, in levels of 255."""
    return int(
        np.abs(
            np.stack([np.asarray(i, dtype=np.int16) for i in first])
            - np.stack([np.asarray(i) for i in second])
        ).max()
    )


def encoder_calls(kind: str, steps: str, argv: list[str], monkeypatch) -> int:
    """How often a training run calls the text encoder's forward."""
    calls = []
    forward = RobertaSeriesModelWithTransformation.forward
    monkeypatch.setattr(
        RobertaSeriesModelWithTransformation,
        "forward",
        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k),
    )
    train_in_process(kind, [*argv, "--max_train_steps", steps])
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("kind", KINDS)
def test_the_encoder_runs_every_step_only_for_adapters_in_or_before_it(
    kind, roomy_model_dir, colour_dataset, tmp_path, monkeypatch
):
    two, six = (
        encoder_calls(kind, s, common_args(colour_dataset, roomy_model_dir, tmp_path / s, "run"), monkeypatch)
        for s in ("2", "6")
    )
    if get_kind(kind).acts_on_output:
        assert two == six > 0  # only the one-off caption cache, however many steps
    else:
        assert six - two == 4


@pytest.mark.parametrize("kind", KINDS)
def test_training_learns_a_small_set_and_leaves_the_base_unchanged(
    kind, roomy_model_dir, colour_dataset, tmp_path, monkeypatch
):
    loaded = []
    real_load = train_module.load_base
    monkeypatch.setattr(
        train_module, "load_base", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1]
    )
    files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in roomy_model_dir.rglob("*.safetensors")}
    argv = common_args(
        colour_dataset, roomy_model_dir, tmp_path, "run", "--validation_dir", str(colour_dataset)
    )
    argv += ["--max_train_steps", "30", "--learning_rate", "3e-3", "--validation_steps", "30"]
    _, metadata = read_adapter_file(train_in_process(kind, [*argv, "--mixed_precision", "no"]))
    assert metadata.kind == kind and metadata.step == 30
    assert metadata.extra["val_loss_adapter"] < metadata.extra["val_loss_original"]
    fresh = real_load(roomy_model_dir)
    for name in ("text_encoder", "unet", "vae"):
        assert state_checksum(getattr(loaded[0], name)) == state_checksum(getattr(fresh, name))
    assert files == {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in roomy_model_dir.rglob("*.safetensors")
    }


@pytest.mark.parametrize("kind", KINDS)
def test_a_parquet_dataset_with_a_tags_column_trains_it_with_shuffled_tags(
    kind, roomy_model_dir, parquet_dataset, tmp_path
):
    argv = common_args(parquet_dataset, roomy_model_dir, tmp_path, "run", "--caption_column", "tags")
    argv[argv.index("--data_dir")] = "--dataset_name"
    argv += [
        "--max_train_steps",
        "2",
        "--shuffle_caption",
        "--keep_tokens",
        "1",
        "--caption_dropout_rate",
        "0.2",
    ]
    tensors, metadata = read_adapter_file(train_in_process(kind, argv))
    assert metadata.kind == kind and metadata.step == 2
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert json.loads(metadata.extra["training"])["dataset_name"] == str(parquet_dataset)


@pytest.mark.parametrize("kind", KINDS)
def test_train_adapter_refuses_the_flags_of_other_kinds(kind, colour_dataset, capsys):
    for other in KINDS:
        for flag in sorted(own_flags(other) - own_flags(kind)):
            with pytest.raises(SystemExit):
                parse_kind_args(["--data_dir", str(colour_dataset), "--kind", kind, flag, "1"], "")
            assert f"error: {flag} is a flag of --kind" in capsys.readouterr().err


# `--standalone`: torchrun's store binds a free port itself and its workers use that store, so two runs at
# once (two pytest-xdist workers, two test runs on one machine) never meet at a port.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.parametrize("kind", KINDS)
def test_two_process_torchrun_writes_one_identical_adapter(kind, roomy_model_dir, aspect_dataset, tmp_path):
    """In aspect-ratio buckets: the two processes' batches differ in size as well as in pictures."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    script, kind_flags = kind_script(kind)
    argv = common_args(
        aspect_dataset, roomy_model_dir, tmp_path, "run", "--enable_bucket", "--batch_size", "2"
    )
    command = [*TORCHRUN, str(script), *kind_flags, *argv]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "on process" in line]
    digests = {line.split("adapter ")[1].split()[0] for line in lines}
    assert {line.split("on process ")[1] for line in lines} == {"0", "1"} and len(digests) == 1
    assert [p.name for p in (tmp_path / "run").glob("*.safetensors")] == ["run.safetensors"]
