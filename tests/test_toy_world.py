"""The demo's toy world (renderer, classifier, captions, domain data) and the toy-base trainer."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from altadapter import toy_world
from altadapter.model import load_base
from altadapter.tags import find_tagged_images, read_tag_file
from altadapter.tiny_models import PRESETS, build_tokenizer
from altadapter.toy_training import (
    REPORT_FILE,
    TOY_SIZE,
    ScenePool,
    ToyBaseConfig,
    build_caption_bank,
    shifted_positions,
    train_toy_base,
)
from altadapter.toy_world import Attributes

DEMO = Path(__file__).resolve().parents[1] / "demo"


def test_classifier_reads_every_combination_of_clean_renders():
    rng = np.random.default_rng(0)
    combos = toy_world.all_attributes() * 10  # 10 jittered renders of each of the 90 combinations
    assert len(set(combos)) == 90
    images = toy_world.render_batch(combos, 32, rng).numpy()
    accuracy = toy_world.attribute_accuracy(list(images), combos)
    assert {name: accuracy[name] for name in ("fg", "bg", "shape", "all")} == dict.fromkeys(
        ("fg", "bg", "shape", "all"), 1.0
    )
    assert accuracy["chance"] == pytest.approx({"fg": 1 / 6, "bg": 1 / 6, "shape": 1 / 3, "all": 1 / 90})


def test_classifier_reads_larger_pictures_and_pil_images():
    rng = np.random.default_rng(1)
    for attrs in toy_world.all_attributes()[::7]:
        image = toy_world.render_scene(attrs, 64, rng)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert toy_world.classify_image(image) == attrs


def test_renders_vary_but_are_reproducible_by_seed():
    attrs = [Attributes("red", "blue", "circle")] * 2
    first = toy_world.render_batch(attrs, 32, np.random.default_rng(5)).numpy()
    again = toy_world.render_batch(attrs, 32, np.random.default_rng(5)).numpy()
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


def test_picture_without_a_foreground_scores_wrong_everywhere():
    flat = np.full((32, 32, 3), toy_world.PALETTE["blue"], dtype=np.uint8)
    assert toy_world.classify_image(flat) is None
    accuracy = toy_world.attribute_accuracy([flat], [Attributes("red", "blue", "square")])
    assert accuracy["bg"] == accuracy["fg"] == accuracy["all"] == 0.0


def test_attributes_refuse_invisible_or_unknown_values():
    with pytest.raises(ValueError, match="fg and bg are both 'red'"):
        Attributes("red", "red", "circle")
    with pytest.raises(ValueError, match="shape='star'"):
        Attributes("red", "blue", "star")


def test_base_captions_name_the_attributes_and_never_a_domain_word():
    rng = np.random.default_rng(0)
    domain_words = set(toy_world.DOMAIN_TAGS)
    for attrs in toy_world.all_attributes():
        for _ in range(20):
            caption = toy_world.base_caption(attrs, rng, max_filler=12)
            words = set(caption.replace(",", " ").split())
            assert not words & domain_words, caption
            assert {attrs.fg, attrs.bg, attrs.shape} <= words


def test_domain_captions_use_the_writeup_format():
    rng = np.random.default_rng(0)
    attrs = Attributes("yellow", "black", "triangle")
    tags = toy_world.domain_caption(attrs, rng, (12, 16)).split(", ")
    assert tags[:2] == ["1girl", "solo"]
    assert 12 <= len(tags) - 2 <= 16
    assert set(toy_world.domain_tags(attrs)) <= set(tags)
    assert set(tags[2:]) <= set(toy_world.DOMAIN_TAGS) | set(toy_world.FILLER_TAGS)
    # Plain words never describe a domain picture: the base cannot read these captions.
    assert not set(" ".join(tags).split()) & {*toy_world.COLOURS, *toy_world.SHAPES, "background"}


def test_every_word_is_one_piece_of_the_toy_tokenizer():
    tokenizer = build_tokenizer(toy_world.TOY_VOCABULARY, 160)
    for word in toy_world.TOY_VOCABULARY:
        assert tokenizer.tokenize(word) == ["▁" + word], word
    assert set(toy_world.DOMAIN_TAGS) <= set(toy_world.TOY_VOCABULARY)


def test_prompt_lists_are_reproducible_and_balanced():
    short = toy_world.domain_prompts(90, seed=3, num_tags=toy_world.SHORT_NUM_TAGS)
    assert short == toy_world.domain_prompts(90, seed=3, num_tags=toy_world.SHORT_NUM_TAGS)
    assert short != toy_world.domain_prompts(90, seed=4, num_tags=toy_world.SHORT_NUM_TAGS)
    assert {p.attrs for p in short} == set(toy_world.all_attributes())
    assert all(len(p.text.split(", ")) == 2 + 4 for p in short)
    base = toy_world.base_world_prompts(12, seed=3)
    assert base == toy_world.base_world_prompts(12, seed=3)
    assert all(p.attrs.fg in p.text and p.attrs.bg in p.text for p in base)


def test_domain_dataset_writes_images_with_comma_separated_tag_files(tmp_path):
    folders = toy_world.make_domain_dataset(tmp_path / "toy", n_train=12, n_heldout=5, seed=0)
    assert set(folders) == {"train", "heldout"}
    for split, count in (("train", 12), ("heldout", 5)):
        scan = find_tagged_images(folders[split])
        assert len(scan.images) == count and not scan.orphan_tag_files
        attributes = json.loads((folders[split] / "attributes.json").read_text())
        for item in scan.images:
            attrs = Attributes(**attributes[item.image.stem])
            tags = read_tag_file(item.tag_file)
            assert tags[:2] == ["1girl", "solo"]
            assert set(toy_world.domain_tags(attrs)) <= set(tags)
            assert toy_world.classify_image(toy_world.Image.open(item.image)) == attrs


def test_shifted_positions_move_text_after_bos_and_keep_padding():
    ids = torch.tensor([[0, 7, 8, 2, 1, 1, 1, 1]] * 64)
    positions = shifted_positions(ids, pad_id=1, share=1.0, generator=torch.Generator().manual_seed(0))
    assert (positions[:, 0] == 2).all() and (positions[:, 4:] == 1).all()
    shifts = positions[:, 1] - 3
    assert shifts.min() == 0 and shifts.max() == 4  # at most the 4 free positions: never past the table
    assert (positions[:, 1:4] == positions[:, 1:2] + torch.arange(3)).all()
    unshifted = shifted_positions(ids, pad_id=1, share=0.0, generator=torch.Generator().manual_seed(0))
    assert unshifted[0].tolist() == [2, 3, 4, 5, 1, 1, 1, 1]


def test_caption_bank_rows_describe_the_pool_scenes_they_are_paired_with():
    tokenizer = build_tokenizer(toy_world.TOY_VOCABULARY, 160)
    rng = np.random.default_rng(0)
    config = ToyBaseConfig(captions_per_combo=3, pool_size=50)
    pool = ScenePool.render(config.pool_size, 32, rng, torch.device("cpu"))
    bank = build_caption_bank(tokenizer, config, rng)
    assert bank.shape == (90, 3, 160)
    for image, combo in zip(pool.images, pool.combos, strict=True):
        seen = toy_world.classify_image(image.permute(1, 2, 0).numpy())
        for ids in bank[combo]:
            words = set(tokenizer.decode(ids, skip_special_tokens=True).replace(",", " ").split())
            assert {seen.fg, seen.bg, seen.shape} <= words


@pytest.fixture(scope="module")
def trained_tiny_base(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny-sized toy base trained for a few steps: the whole trainer, in seconds."""
    size = dataclasses.replace(PRESETS["tiny"], model_max_length=64)
    config = ToyBaseConfig(
        size=size,
        pool_size=16,
        captions_per_combo=2,
        vae_steps=2,
        unet_steps=3,
        batch_size=2,
        vae_batch_size=2,
        eval_prompts=3,
        eval_steps=2,
        eval_batch_size=3,
        round_trip_scenes=4,
        device="cpu",
    )
    folder = tmp_path_factory.mktemp("toy") / "toy_base"
    return folder, train_toy_base(config, folder)


def test_trainer_saves_a_folder_load_base_reads(trained_tiny_base):
    folder, report = trained_tiny_base
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert weights.get_tensor("conv_in.weight").dtype == torch.float16  # half the size on disk
    base = load_base(folder)
    assert base.unet.dtype == base.text_encoder.dtype == torch.float32
    assert base.info.model_max_length == 64
    assert base.tokenizer.tokenize("exusiai") == ["▁exusiai"]
    assert base.vae.config.scaling_factor == pytest.approx(report["vae"]["scaling_factor"])
    assert report["unet"]["steps"] == 3 and report["base_world_accuracy"]["n"] == 3
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["base_world_accuracy"]["chance"]["all"] == pytest.approx(1 / 90)
    assert (folder / "samples.png").is_file()


def _script(name: str):
    sys.path.insert(0, str(DEMO))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(DEMO))


def test_train_script_evaluates_a_saved_model_again(trained_tiny_base, capsys):
    folder, _ = trained_tiny_base
    script = _script("train_toy_base")
    assert script.parse_args([]).device == "auto"
    args = ["--output_dir", str(folder), "--eval_only", "--device", "cpu"]
    args += ["--eval_prompts", "2", "--eval_steps", "1", "--round_trip_scenes", "4"]
    script.main(script.parse_args(args))
    summary = json.loads(capsys.readouterr().out.split("\nreport:")[0])
    assert summary["unet_steps"] == 3 and set(summary["accuracy"]) == {"fg", "bg", "shape", "all"}
    assert json.loads((folder / REPORT_FILE).read_text())["eval"]["prompts"] == 2


def test_make_toy_domain_script_writes_data_and_prompt_lists(tmp_path):
    script = _script("make_toy_domain")
    args = ["--output_dir", str(tmp_path), "--num_train", "6", "--num_heldout", "2", "--num_prompts", "4"]
    script.main(script.parse_args(args))
    assert len(list((tmp_path / "train").glob("*.txt"))) == 6
    assert len(list((tmp_path / "heldout").glob("*.png"))) == 2
    lists = toy_world.read_prompt_lists(tmp_path / toy_world.PROMPTS_JSON)
    for name in toy_world.PROMPT_LISTS:
        lines = (tmp_path / name).read_text(encoding="utf-8").splitlines()
        assert lines == [prompt.text for prompt in lists[name]] and len(lines) == 4
    assert TOY_SIZE.model_max_length >= 100 + 50  # the write-up's 100 prompt vectors + a long caption
