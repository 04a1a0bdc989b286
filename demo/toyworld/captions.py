"""The toy world in words: plain-English base captions, and the tag domain the base never saw.

The base world is described in plain words ("a red circle on a blue background"), the words a toy base is
trained on. The toy domain describes the same pictures in the write-up's danbooru format: "1girl, solo" +
tags in random order, where each attribute tag (`DOMAIN_TAGS`, Arknights names) fixes one attribute and
filler tags ("long hair") carry no visual meaning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from altadapter.fileio import atomic_write
from toyworld.world import (
    ATTRIBUTE_NAMES,
    COLOURS,
    SHAPES,
    Attributes,
    Prompt,
    all_attributes,
    balanced_attributes,
    render_batch,
)

# --- plain-word captions of the base world -----------------------------------------------------------------

# Every template names all three attributes; the word order varies, so the encoder must read roles.
BASE_TEMPLATES = (
    "a {fg} {shape} on a {bg} background",
    "{fg} {shape} on {bg}",
    "a {bg} background with a {fg} {shape}",
    "{fg} {shape}, {bg} background",
    "a {shape} in {fg} on a {bg} background",
    "on a {bg} background, a {fg} {shape}",
)
# Words with no visual meaning that pad base captions to the lengths of domain captions, so the toy
# encoder learns to ignore filler, as a real pre-trained one does. The danbooru fillers are among them:
# a real base knows "long hair"; what it does not know are the domain's own names.
FILLER_TAGS = (
    "looking at viewer",
    "smile",
    "long hair",
    "short hair",
    "open mouth",
    "closed eyes",
    "upper body",
    "standing",
    "sitting",
    "blush",
    "bangs",
    "hair ornament",
    "hat",
    "jacket",
    "gloves",
    "animal ears",
    "tail",
    "wings",
    "ahoge",
    "earrings",
    "choker",
    "holding weapon",
    "simple drawing",
    "high quality",
)
DOMAIN_PREFIX = ("1girl", "solo")
NEUTRAL_PHRASES = (*FILLER_TAGS, *DOMAIN_PREFIX, "a picture", "flat colors", "centered", "toy world")


def base_caption(attrs: Attributes, rng: np.random.Generator, *, max_filler: int = 0) -> str:
    """A plain-English caption naming all three attributes, optionally among up to `max_filler` phrases."""
    caption = BASE_TEMPLATES[rng.integers(len(BASE_TEMPLATES))].format(**attrs.to_dict())
    num_filler = int(rng.integers(max_filler + 1)) if max_filler else 0
    if num_filler == 0:
        return caption
    parts = [NEUTRAL_PHRASES[i] for i in rng.choice(len(NEUTRAL_PHRASES), num_filler, replace=False)]
    parts.insert(int(rng.integers(len(parts) + 1)), caption)
    return ", ".join(parts)


def base_world_prompts(n: int, seed: int) -> list[Prompt]:
    """`n` plain-word prompts (no filler) over every attribute combination in turn, reproducible by seed."""
    rng = np.random.default_rng(seed)
    return [Prompt(base_caption(attrs, rng), attrs) for attrs in balanced_attributes(n, rng)]


def prompts_per_template(combos_per_template: int, seed: int) -> dict[str, list[Prompt]]:
    """For each base template, prompts for `combos_per_template` combinations (all 90 at most), by seed."""
    combos = all_attributes()
    order = np.random.default_rng(seed).permutation(len(combos))[:combos_per_template]
    return {
        template: [Prompt(template.format(**combos[i].to_dict()), combos[i]) for i in order]
        for template in BASE_TEMPLATES
    }


# --- the toy domain ----------------------------------------------------------------------------------------

# Each tag fixes one attribute; no tag ever appears in a base caption. Names from Arknights, as the write-up.
DOMAIN_TAGS: dict[str, tuple[str, str]] = {
    "exusiai": ("fg", "red"),
    "gavial": ("fg", "green"),
    "amiya": ("fg", "blue"),
    "sora": ("fg", "yellow"),
    "lappland": ("fg", "white"),
    "texas": ("fg", "black"),
    "lungmen": ("bg", "red"),
    "kazimierz": ("bg", "green"),
    "iberia": ("bg", "blue"),
    "laterano": ("bg", "yellow"),
    "ursus": ("bg", "white"),
    "kazdel": ("bg", "black"),
    "sankta": ("shape", "circle"),
    "rhine": ("shape", "square"),
    "originium": ("shape", "triangle"),
}
_TAG_OF = {value: tag for tag, value in DOMAIN_TAGS.items()}
# Attribute tags + filler tags after the prefix in a training caption (the write-up's captions are long).
TRAIN_NUM_TAGS = (12, 16)
SHORT_NUM_TAGS = 4

TOY_VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        word
        for text in (*BASE_TEMPLATES, *NEUTRAL_PHRASES, *COLOURS, *SHAPES, *DOMAIN_TAGS)
        for word in text.replace(",", " ").split()
        if not word.startswith("{")
    )
)


def domain_tags(attrs: Attributes) -> list[str]:
    """The three attribute tags that describe `attrs` in the domain's words: [fg tag, bg tag, shape tag]."""
    return [_TAG_OF[(name, getattr(attrs, name))] for name in ATTRIBUTE_NAMES]


def domain_caption(attrs: Attributes, rng: np.random.Generator, num_tags: int | tuple[int, int]) -> str:
    """A caption in the write-up's format: the prefix, then the 3 attribute tags and filler tags in random
    order, `num_tags` of them after the prefix (or a random count within a (low, high) range)."""
    low, high = (num_tags, num_tags) if isinstance(num_tags, int) else num_tags
    count = int(rng.integers(low, high + 1))
    if not len(ATTRIBUTE_NAMES) <= count <= len(ATTRIBUTE_NAMES) + len(FILLER_TAGS):
        raise ValueError(f"num_tags must be within 3..{3 + len(FILLER_TAGS)}, got {count}")
    fillers = [FILLER_TAGS[i] for i in rng.choice(len(FILLER_TAGS), count - 3, replace=False)]
    tags = domain_tags(attrs) + fillers
    return ", ".join([*DOMAIN_PREFIX, *(tags[i] for i in rng.permutation(len(tags)))])


def domain_prompts(n: int, seed: int, *, num_tags: int | tuple[int, int]) -> list[Prompt]:
    """`n` domain prompts over every attribute combination in turn, reproducible by seed.

    num_tags=SHORT_NUM_TAGS (4) gives the write-up's short prompts; TRAIN_NUM_TAGS the training lengths.
    """
    rng = np.random.default_rng(seed)
    return [Prompt(domain_caption(attrs, rng, num_tags), attrs) for attrs in balanced_attributes(n, rng)]


def picture_sizes(
    count: int, size: int, nonsquare_share: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(width, height) of each of `count` pictures: squares of `size`, but for a `nonsquare_share` of them,
    drawn at random, a 2:1 or 1:2 rectangle with `size` as its shorter side. Nothing is drawn from `rng`
    when the share is 0, so an all-square domain is the one it always was."""
    if nonsquare_share == 0:
        return [(size, size)] * count
    shapes = [(size, size), (2 * size, size), (size, 2 * size)]
    nonsquare = rng.random(count) < nonsquare_share
    tall = rng.integers(0, 2, count)
    return [shapes[1 + int(t)] if n else shapes[0] for n, t in zip(nonsquare, tall, strict=True)]


def render_at_sizes(
    attrs: Sequence[Attributes], sizes: Sequence[tuple[int, int]], rng: np.random.Generator
) -> list[np.ndarray]:
    """Each scene rendered at its (width, height): (height, width, 3) uint8 arrays, one batch per size in
    order of first appearance (one size: one `render_batch`, so an all-square set draws what it always did)."""
    images: list[np.ndarray] = [np.empty(0)] * len(attrs)
    for shape in dict.fromkeys(sizes):
        indices = [i for i, s in enumerate(sizes) if s == shape]
        rendered = render_batch([attrs[i] for i in indices], shape, rng).numpy()
        for i, pixels in zip(indices, rendered, strict=True):
            images[i] = pixels
    return images


def make_domain_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_heldout: int,
    seed: int,
    *,
    size: int = 32,
    num_tags: int | tuple[int, int] = TRAIN_NUM_TAGS,
    nonsquare_share: float = 0.0,
) -> dict[str, Path]:
    """Write `train/` and `heldout/`: NNNNN.png + NNNNN.txt (comma-separated tags), as the write-up's data.

    A `nonsquare_share` of the pictures are 2:1 or 1:2 (see `picture_sizes`), for aspect-ratio buckets.
    Each split also gets attributes.json ({stem: {"fg", "bg", "shape"}}), which the tools ignore.
    Returns {"train": path, "heldout": path}.
    """
    rng = np.random.default_rng(seed)
    folders = {}
    for split, count in (("train", n_train), ("heldout", n_heldout)):
        folder = Path(out_dir) / split
        folder.mkdir(parents=True, exist_ok=True)
        attrs_list = balanced_attributes(count, rng)
        images = render_at_sizes(attrs_list, picture_sizes(count, size, nonsquare_share, rng), rng)
        records = {}
        for index, (attrs, pixels) in enumerate(zip(attrs_list, images, strict=True)):
            stem = f"{index:05d}"
            Image.fromarray(pixels, mode="RGB").save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(domain_caption(attrs, rng, num_tags) + "\n", encoding="utf-8")
            records[stem] = attrs.to_dict()
        with atomic_write(folder / "attributes.json") as handle:
            json.dump(records, handle, indent=1)
        folders[split] = folder
    return folders


PROMPT_LISTS = ("domain_prompts_short.txt", "domain_prompts_long.txt", "base_prompts.txt")
PROMPTS_JSON = "prompts.json"


def write_prompt_lists(out_dir: str | os.PathLike, num_prompts: int, seed: int) -> dict[str, Path]:
    """Write the three evaluation prompt files (one prompt per line) and prompts.json with expected attributes.

    domain_prompts_short.txt: 4 tags (the write-up's short prompts); domain_prompts_long.txt: training-length
    captions; base_prompts.txt: plain-word prompts of the base world (out of domain for an adapter).
    prompts.json: {file name: [{"prompt", "fg", "bg", "shape"}, ...]}, in file order.
    """
    lists = {
        "domain_prompts_short.txt": domain_prompts(num_prompts, seed, num_tags=SHORT_NUM_TAGS),
        "domain_prompts_long.txt": domain_prompts(num_prompts, seed + 1, num_tags=TRAIN_NUM_TAGS),
        "base_prompts.txt": base_world_prompts(num_prompts, seed + 2),
    }
    out_dir = Path(out_dir)
    paths = {}
    for name, prompts in lists.items():
        with atomic_write(out_dir / name) as handle:
            handle.writelines(prompt.text + "\n" for prompt in prompts)
        paths[name] = out_dir / name
    expected = {
        name: [{"prompt": p.text, **p.attrs.to_dict()} for p in prompts] for name, prompts in lists.items()
    }
    with atomic_write(out_dir / PROMPTS_JSON) as handle:
        json.dump(expected, handle, indent=1)
    paths[PROMPTS_JSON] = out_dir / PROMPTS_JSON
    return paths


def read_prompt_lists(path: str | os.PathLike) -> dict[str, list[Prompt]]:
    """prompts.json back as {file name: [Prompt, ...]}."""
    lists = json.loads(Path(path).read_text(encoding="utf-8"))
    return {
        name: [Prompt(item["prompt"], Attributes(item["fg"], item["bg"], item["shape"])) for item in items]
        for name, items in lists.items()
    }
