"""The toy-base trainer: its caption banks, position shifts, text phase, the whole run, and its script."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from altadapter.model import load_base
from altadapter.testing.tiny_models import PRESETS, build_text_encoder, build_tokenizer
from toyworld import captions, world
from toyworld.base_config import REPORT_FILE, TOY_SIZE, ToyBaseConfig
from toyworld.base_data import ConditioningBank, ScenePool, build_caption_bank, shifted_positions
from toyworld.base_training import train_toy_base
from toyworld.demo_config import DemoConfig
from toyworld.text_pretraining import text_signals, train_text_encoder


def test_shifted_positions_move_text_after_bos_and_keep_padding():
    ids = torch.tensor([[0, 7, 8, 2, 1, 1, 1, 1]] * 64)
    positions = shifted_positions(ids, pad_id=1, share=1.0, generator=torch.Generator().manual_seed(0))
    assert (positions[:, 0] == 2).all() and (positions[:, 4:] == 1).all()
    shifts = positions[:, 1] - 3
    assert shifts.min() == 0 and shifts.max() == 4  # at most the 4 free positions: never past the table
    assert (positions[:, 1:4] == positions[:, 1:2] + torch.arange(3)).all()
    unshifted = shifted_positions(ids, pad_id=1, share=0.0, generator=torch.Generator().manual_seed(0))
    assert unshifted[0].tolist() == [2, 3, 4, 5, 1, 1, 1, 1]


def test_the_longest_domain_caption_fits_beside_the_demo_prompt_vectors():
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, TOY_SIZE.model_max_length)
    longest = max(
        len(tokenizer(p.text).input_ids)
        for p in captions.domain_prompts(900, seed=0, num_tags=captions.TRAIN_NUM_TAGS)
    )
    assert longest + DemoConfig().num_prompts <= TOY_SIZE.model_max_length


@pytest.fixture(scope="module")
def bank_and_tokenizer():
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, 64)
    config = ToyBaseConfig(captions_per_combo=3, max_filler=4)
    return build_caption_bank(tokenizer, config, np.random.default_rng(0)), tokenizer


def test_caption_bank_holds_every_template_and_varied_captions_of_each_combination(bank_and_tokenizer):
    bank, tokenizer = bank_and_tokenizer
    assert bank.plain.shape == (90, len(captions.BASE_TEMPLATES), 64) and bank.varied.shape == (90, 3, 64)
    for combo, attrs in enumerate(world.all_attributes()):
        texts = tokenizer.batch_decode(
            torch.cat([bank.plain[combo], bank.varied[combo]]), skip_special_tokens=True
        )
        assert texts[: len(captions.BASE_TEMPLATES)] == [
            template.format(**attrs.to_dict()) for template in captions.BASE_TEMPLATES
        ]
        for text in texts:
            assert {attrs.fg, attrs.bg, attrs.shape} <= set(text.replace(",", " ").split())
    assert (bank.varied_positions != bank.varied_positions.new_tensor(0)).all()


def test_scene_pool_pairs_each_picture_with_its_combination():
    pool = ScenePool.render(40, 32, np.random.default_rng(0), torch.device("cpu"))
    combos = world.all_attributes()
    for image, combo in zip(pool.images, pool.combos, strict=True):
        assert world.classify_image(image.permute(1, 2, 0).numpy()) == combos[combo]


def test_text_phase_teaches_the_encoder_which_colour_is_the_shape(bank_and_tokenizer):
    bank, tokenizer = bank_and_tokenizer
    size = dataclasses.replace(TOY_SIZE, num_hidden_layers=1)
    torch.manual_seed(0)
    encoder = build_text_encoder(size, len(tokenizer))
    # Twice the recipe's learning rate for half the steps: the same margin (0.20-0.27 over four seeds, where
    # 150 steps at 2e-3 gave 0.17-0.21) in half the time.
    config = ToyBaseConfig(text_steps=75, text_batch_size=128, text_lr=4e-3, log_every=1000)
    report = train_text_encoder(encoder, bank, config, torch.device("cpu"), budget_s=300)
    # After 75 steps a probe reading fg, bg and shape from the averaged outputs gets all three right far
    # above chance (1/90) on every phrasing, those that name the background first included (the full
    # recipe reaches 100% on each).
    assert min(report["probe_accuracy"].values()) > 0.1, report["probe_accuracy"]
    assert report["spread"] > 0.1  # distinct captions stay apart: no collapse
    assert not any(p.requires_grad for p in encoder.parameters())
    conditionings = ConditioningBank.encode(encoder, bank)
    assert conditionings.plain.shape == (90, len(captions.BASE_TEMPLATES), 64, size.project_dim)
    again = text_signals(encoder, torch.nn.Linear(size.project_dim, 15), bank)["spread"]
    assert again == pytest.approx(report["spread"], rel=1e-4)


@pytest.fixture(scope="module")
def trained_tiny_base(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny-sized toy base trained for a few steps: the whole trainer, in seconds."""
    size = dataclasses.replace(PRESETS["tiny"], model_max_length=64)
    config = ToyBaseConfig(
        size=size,
        pool_size=30,  # also the guidance-gap probe's batch (at most 90), which every logged step runs twice
        captions_per_combo=2,
        vae_steps=2,
        text_steps=2,
        unet_steps=3,
        batch_size=2,
        vae_batch_size=2,
        text_batch_size=4,
        eval_combos=2,
        eval_steps=2,
        eval_batch_size=6,
        round_trip_scenes=4,
        log_every=1,
        device="cpu",
    )
    folder = tmp_path_factory.mktemp("toy") / "toy_base"
    return folder, train_toy_base(config, folder, command="pytest")


def test_trainer_saves_a_folder_load_base_reads(trained_tiny_base):
    folder, report = trained_tiny_base
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert weights.get_tensor("conv_in.weight").dtype == torch.float16  # half the size on disk
    base = load_base(folder)
    assert base.unet.dtype == base.text_encoder.dtype == torch.float32
    assert base.info.model_max_length == 64
    assert base.tokenizer.tokenize("exusiai") == ["▁exusiai"]
    assert base.vae.config.scaling_factor == pytest.approx(report["vae"]["scaling_factor"])
    assert report["unet"]["steps"] == 3 and report["text_encoder"]["steps"] == 2
    assert report["base_world_accuracy"]["n"] == 2 * len(captions.BASE_TEMPLATES)
    assert list(report["per_template"]) == list(captions.BASE_TEMPLATES)
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["command"] == "pytest" and saved["base_world_accuracy"]["chance"]["all"] == pytest.approx(
        1 / 90
    )
    assert [entry["step"] for entry in saved["unet"]["loss_curve"]] == [1, 2, 3]
    # Even barely trained, the prediction moves with the caption (~1e-3 here); 0 means the caption never
    # reaches the UNet. The committed base's gap is checked in test_evidence.py.
    assert all(entry["guidance_gap"] > 1e-5 for entry in saved["unet"]["loss_curve"]), saved["unet"]
    assert (folder / "samples.png").is_file()


def test_train_script_evaluates_a_saved_model_again(trained_tiny_base, capsys, demo_script):
    folder, _ = trained_tiny_base
    script = demo_script("train_toy_base")
    assert script.parse_args([]).device == "auto"
    args = ["--output_dir", str(folder), "--eval_only", "--device", "cpu"]
    args += ["--eval_combos", "1", "--eval_steps", "1", "--round_trip_scenes", "4"]
    script.main(script.parse_args(args))
    summary = json.loads(capsys.readouterr().out.split("\nreport:")[0])
    assert summary["unet_steps"] == 3 and set(summary["accuracy"]) == {"fg", "bg", "shape", "all"}
    assert json.loads((folder / REPORT_FILE).read_text())["eval"]["prompts"] == len(captions.BASE_TEMPLATES)
