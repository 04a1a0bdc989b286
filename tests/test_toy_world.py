"""The demo's toy world: renderer, classifier, captions, domain data and its script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from altadapter.data.tags import find_tagged_images, read_tag_file
from altadapter.testing.tiny_models import build_tokenizer
from toyworld import captions, world
from toyworld.world import Attributes

DEMO = Path(__file__).resolve().parents[1] / "demo"


def test_classifier_reads_every_combination_of_clean_renders():
    rng = np.random.default_rng(0)
    combos = world.all_attributes() * 10  # 10 jittered renders of each of the 90 combinations
    assert len(set(combos)) == 90
    images = world.render_batch(combos, 32, rng).numpy()
    accuracy = world.attribute_accuracy(list(images), combos)
    assert {name: accuracy[name] for name in ("fg", "bg", "shape", "all")} == dict.fromkeys(
        ("fg", "bg", "shape", "all"), 1.0
    )
    assert accuracy["chance"] == pytest.approx({"fg": 1 / 6, "bg": 1 / 6, "shape": 1 / 3, "all": 1 / 90})


def test_classifier_reads_larger_pictures_and_pil_images():
    rng = np.random.default_rng(1)
    for attrs in world.all_attributes()[::7]:
        image = world.render_scene(attrs, 64, rng)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert world.classify_image(image) == attrs


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (48, 40)])
def test_classifier_reads_every_combination_at_any_aspect(size):
    combos = world.all_attributes() * 3
    images = world.render_batch(combos, size, np.random.default_rng(2)).numpy()
    assert images.shape == (len(combos), size[1], size[0], 3)
    assert world.attribute_accuracy(list(images), combos)["all"] == 1.0


def test_renders_vary_but_are_reproducible_by_seed():
    attrs = [Attributes("red", "blue", "circle")] * 2
    first = world.render_batch(attrs, 32, np.random.default_rng(5)).numpy()
    again = world.render_batch(attrs, 32, np.random.default_rng(5)).numpy()
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


def test_picture_without_a_foreground_scores_wrong_everywhere():
    flat = np.full((32, 32, 3), world.PALETTE["blue"], dtype=np.uint8)
    assert world.classify_image(flat) is None
    accuracy = world.attribute_accuracy([flat], [Attributes("red", "blue", "square")])
    assert accuracy["bg"] == accuracy["fg"] == accuracy["all"] == 0.0


def test_attributes_refuse_invisible_or_unknown_values():
    with pytest.raises(ValueError, match="fg and bg are both 'red'"):
        Attributes("red", "red", "circle")
    with pytest.raises(ValueError, match="shape='star'"):
        Attributes("red", "blue", "star")


def test_base_captions_name_the_attributes_and_never_a_domain_word():
    rng = np.random.default_rng(0)
    domain_words = set(captions.DOMAIN_TAGS)
    for attrs in world.all_attributes():
        for _ in range(20):
            caption = captions.base_caption(attrs, rng, max_filler=12)
            words = set(caption.replace(",", " ").split())
            assert not words & domain_words, caption
            assert {attrs.fg, attrs.bg, attrs.shape} <= words


def test_domain_captions_use_the_writeup_format():
    rng = np.random.default_rng(0)
    attrs = Attributes("yellow", "black", "triangle")
    tags = captions.domain_caption(attrs, rng, (12, 16)).split(", ")
    assert tags[:2] == ["1girl", "solo"]
    assert 12 <= len(tags) - 2 <= 16
    assert set(captions.domain_tags(attrs)) <= set(tags)
    assert set(tags[2:]) <= set(captions.DOMAIN_TAGS) | set(captions.FILLER_TAGS)
    # Plain words never describe a domain picture: the base cannot read these captions.
    assert not set(" ".join(tags).split()) & {*world.COLOURS, *world.SHAPES, "background"}


def test_every_word_is_one_piece_of_the_toy_tokenizer():
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, 64)
    for word in captions.TOY_VOCABULARY:
        assert tokenizer.tokenize(word) == ["▁" + word], word
    assert set(captions.DOMAIN_TAGS) <= set(captions.TOY_VOCABULARY)


def test_prompt_lists_are_reproducible_and_balanced():
    short = captions.domain_prompts(90, seed=3, num_tags=captions.SHORT_NUM_TAGS)
    assert short == captions.domain_prompts(90, seed=3, num_tags=captions.SHORT_NUM_TAGS)
    assert short != captions.domain_prompts(90, seed=4, num_tags=captions.SHORT_NUM_TAGS)
    assert {p.attrs for p in short} == set(world.all_attributes())
    assert all(len(p.text.split(", ")) == 2 + 4 for p in short)
    base = captions.base_world_prompts(12, seed=3)
    assert base == captions.base_world_prompts(12, seed=3)
    assert all(p.attrs.fg in p.text and p.attrs.bg in p.text for p in base)


def test_prompts_per_template_cover_every_template_with_the_same_scenes():
    by_template = captions.prompts_per_template(90, seed=0)
    assert list(by_template) == list(captions.BASE_TEMPLATES)
    scenes = [[p.attrs for p in group] for group in by_template.values()]
    assert all(group == scenes[0] for group in scenes) and set(scenes[0]) == set(world.all_attributes())
    first = by_template[captions.BASE_TEMPLATES[0]][0]
    assert first.text == captions.BASE_TEMPLATES[0].format(**first.attrs.to_dict())


def test_domain_dataset_writes_images_with_comma_separated_tag_files(tmp_path):
    folders = captions.make_domain_dataset(
        tmp_path / "toy", n_train=16, n_heldout=5, seed=0, nonsquare_share=0.5
    )
    assert set(folders) == {"train", "heldout"}
    sizes = {world.Image.open(path).size for path in folders["train"].glob("*.png")}
    assert sizes == {(32, 32), (64, 32), (32, 64)}
    for split, count in (("train", 16), ("heldout", 5)):
        scan = find_tagged_images(folders[split])
        assert len(scan.images) == count and not scan.orphan_tag_files
        attributes = json.loads((folders[split] / "attributes.json").read_text())
        for item in scan.images:
            attrs = Attributes(**attributes[item.image.stem])
            tags = read_tag_file(item.tag_file)
            assert tags[:2] == ["1girl", "solo"]
            assert set(captions.domain_tags(attrs)) <= set(tags)
            assert world.classify_image(world.Image.open(item.image)) == attrs


def test_an_all_square_domain_is_the_one_it_always_was(tmp_path):
    folders = captions.make_domain_dataset(tmp_path, n_train=6, n_heldout=2, seed=0, nonsquare_share=0.0)
    rng = np.random.default_rng(0)  # the draws as they were before pictures could be non-square
    for split, count in (("train", 6), ("heldout", 2)):
        attrs = world.balanced_attributes(count, rng)
        pixels = world.render_batch(attrs, 32, rng).numpy()
        for index in range(count):
            written = np.asarray(world.Image.open(folders[split] / f"{index:05d}.png"))
            assert np.array_equal(written, pixels[index])
            text = (folders[split] / f"{index:05d}.txt").read_text(encoding="utf-8")
            assert text == captions.domain_caption(attrs[index], rng, captions.TRAIN_NUM_TAGS) + "\n"


def test_make_toy_domain_script_writes_data_and_prompt_lists(tmp_path, demo_script):
    script = demo_script("make_toy_domain")
    args = ["--output_dir", str(tmp_path), "--num_train", "6", "--num_heldout", "2", "--num_prompts", "4"]
    script.main(script.parse_args(args))
    assert len(list((tmp_path / "train").glob("*.txt"))) == 6
    assert len(list((tmp_path / "heldout").glob("*.png"))) == 2
    lists = captions.read_prompt_lists(tmp_path / captions.PROMPTS_JSON)
    for name in captions.PROMPT_LISTS:
        lines = (tmp_path / name).read_text(encoding="utf-8").splitlines()
        assert lines == [prompt.text for prompt in lists[name]] and len(lines) == 4
