"""The demo's toy world: coloured shapes on coloured backgrounds, a toy domain of new words, a classifier.

The base world is described in plain words ("a red circle on a blue background"); a toy base model is trained
on it (`altadapter.toy_training`). The toy domain describes the same pictures with words the base never saw,
in the write-up's danbooru format: "1girl, solo" + tags in random order, where each attribute tag
(`DOMAIN_TAGS`, Arknights names) fixes one attribute and filler tags ("long hair") carry no visual meaning.

Three attributes, all readable from a 32x32 image by `classify_image`, a transparent rule:
every pixel takes its nearest palette colour; the background is the most common colour on the border ring,
the foreground the most common other colour; a foreground that fills its bounding box is a square, one
with far fewer pixels in the upper half of its box than in the lower is an (apex-up) triangle, else a circle.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from altadapter.fileio import atomic_write

# Colours far apart in RGB (the closest pair, green and black, 150 apart), so a pixel's nearest
# palette colour is unambiguous even after a VAE round trip.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
ATTRIBUTE_NAMES = ("fg", "bg", "shape")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"fg": COLOURS, "bg": COLOURS, "shape": SHAPES}

# Fill ratio of the foreground in its bounding box: square 1.0, circle pi/4 (0.79), triangle 0.5; a
# square is what fills nearly all of it. Share of the shape in the upper half of its box: apex-up triangle
# 1/4 (0.29 at 32 px), circle 1/2; cut between.
SQUARE_MIN_FILL = 0.9
TRIANGLE_MAX_TOP_SHARE = 0.4
COLOUR_JITTER = 12  # +- per RGB channel, per image and region, so images of one scene differ


@dataclass(frozen=True)
class Attributes:
    """What a picture shows: shape colour `fg`, background colour `bg` (never equal) and `shape`."""

    fg: str
    bg: str
    shape: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            if getattr(self, name) not in ATTRIBUTE_VALUES[name]:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {ATTRIBUTE_VALUES[name]}")
        if self.fg == self.bg:
            raise ValueError(f"fg and bg are both {self.fg!r}: the shape would be invisible")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Prompt:
    """An evaluation prompt and the attributes a model that understood it would draw."""

    text: str
    attrs: Attributes


def all_attributes() -> list[Attributes]:
    """Every valid attribute combination (6 x 5 colours x 3 shapes = 90), in a fixed order."""
    return [
        Attributes(fg, bg, shape) for fg, bg, shape in itertools.product(COLOURS, COLOURS, SHAPES) if fg != bg
    ]


# --- rendering ---------------------------------------------------------------------------------------------


def render_batch(
    attrs: Sequence[Attributes], size: int, rng: np.random.Generator, *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Render scenes with random position, size and colour jitter: (N, size, size, 3) uint8 on `device`.

    The shape is centred within +-6% of the image, its radius 22-30% of the image, so it never touches the
    3-pixel border ring (at 32 px) the classifier reads the background from. 4x4 supersampling anti-aliases.
    Jitter is drawn from `rng` (numpy, so results do not depend on the device); the pixels are computed by
    torch on `device`, which renders a training pool on a GPU in moments.
    """
    n, ss = len(attrs), 4
    centre = torch.as_tensor(size / 2 + rng.uniform(-0.06, 0.06, (n, 2)) * size, dtype=torch.float32)
    radius = torch.as_tensor(rng.uniform(0.22, 0.30, n) * size, dtype=torch.float32)
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (2, n, 3))
    fg = torch.as_tensor([PALETTE[a.fg] for a in attrs] + jitter[0], dtype=torch.float32, device=device)
    bg = torch.as_tensor([PALETTE[a.bg] for a in attrs] + jitter[1], dtype=torch.float32, device=device)
    shape_index = np.array([SHAPES.index(a.shape) for a in attrs])
    coords = (torch.arange(size * ss, dtype=torch.float32, device=device) + 0.5) / ss  # sub-pixel centres
    coverage = torch.empty(n, size, size, 1, device=device)
    for kind, shape in enumerate(SHAPES):
        # In chunks, which bound the (chunk, 4 size, 4 size) sub-pixel masks.
        for part in np.array_split(np.flatnonzero(shape_index == kind), max(1, n // 4096)):
            if len(part) == 0:
                continue
            x = coords[None, None, :] - centre[part, 0, None, None].to(device)  # (M, 1, S) from the centre
            y = coords[None, :, None] - centre[part, 1, None, None].to(device)  # (M, S, 1)
            r = radius[part, None, None].to(device)
            if shape == "circle":
                mask = x**2 + y**2 <= r**2
            elif shape == "square":
                mask = (x.abs() <= 0.9 * r) & (y.abs() <= 0.9 * r)
            else:  # apex up at -r, base at +0.8 r, half-width 1.05 r at the base
                depth = (y + r) / (1.8 * r)
                mask = (depth >= 0) & (depth <= 1) & (x.abs() <= 1.05 * r * depth)
            part = torch.as_tensor(part, device=device)
            coverage[part] = mask.view(-1, size, ss, size, ss).float().mean(dim=(2, 4))[..., None]
    image = coverage * fg[:, None, None] + (1 - coverage) * bg[:, None, None]  # (N, size, size, 3)
    return image.round_().clamp_(0, 255).to(torch.uint8)


def render_scene(attrs: Attributes, size: int, rng: np.random.Generator) -> Image.Image:
    """One scene as an RGB PIL image of `size` x `size` pixels."""
    return Image.fromarray(render_batch([attrs], size, rng)[0].numpy(), mode="RGB")


# --- the transparent classifier ----------------------------------------------------------------------------


def _palette_labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of each pixel: (..., 3) -> (...)."""
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    distances = ((pixels[..., None, :].astype(np.float64) - palette) ** 2).sum(-1)
    return distances.argmin(-1)


def classify_image(image: Image.Image | np.ndarray) -> Attributes | None:
    """Read fg, bg and shape from a picture; None when no foreground colour is found at all.

    bg: the most common nearest-palette colour on the border ring (1/10 of the side, at least 2 px).
    fg: the most common other colour inside. shape: fill ratio of the fg pixels in their bounding box,
    and for the rest, the share of fg pixels in the upper half of that box (an apex-up triangle has 1/4).
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = _palette_labels(pixels)  # (H, W)
    ring = max(2, round(labels.shape[0] / 10))
    border = np.ones_like(labels, dtype=bool)
    border[ring:-ring, ring:-ring] = False
    bg = np.bincount(labels[border], minlength=len(PALETTE)).argmax()
    counts = np.bincount(labels[~border], minlength=len(PALETTE))
    counts[bg] = 0
    if counts.max() == 0:
        return None
    fg = counts.argmax()
    return Attributes(COLOURS[fg], COLOURS[bg], _shape_of(labels == fg))


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(fill, top_share) of a foreground mask (H, W): how much of its bounding box it fills, and the share
    of its pixels in the upper half of the box. Rows and columns with a single stray pixel are not boxed."""
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    if len(rows) == 0 or len(cols) == 0:
        return 0.0, 0.0
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    # A middle row of an odd-height box counts half to each half.
    weights = np.clip(box.shape[0] / 2 - np.arange(box.shape[0]), 0, 1)
    top = (box.sum(axis=1) * weights).sum()
    return float(box.mean()), float(top / max(box.sum(), 1.0))


def _shape_of(mask: np.ndarray) -> str:
    fill, top_share = shape_features(mask)
    if fill >= SQUARE_MIN_FILL:
        return "square"
    return "triangle" if top_share < TRIANGLE_MAX_TOP_SHARE else "circle"


def chance_levels() -> dict[str, float]:
    """Accuracy of a model that draws any valid scene at random: 1/6 per colour, 1/3 shape, 1/90 all."""
    levels = {name: 1 / len(values) for name, values in ATTRIBUTE_VALUES.items()}
    levels["all"] = 1 / len(all_attributes())
    return levels


def attribute_accuracy(
    images: Sequence[Image.Image | np.ndarray], expected_attrs: Sequence[Attributes]
) -> dict[str, object]:
    """Per-attribute accuracy of `classify_image` on `images`, "all" (every attribute right) and chance.

    Returns {"fg": float, "bg": float, "shape": float, "all": float, "n": int, "chance": {...}};
    an image with no readable foreground counts as wrong on every attribute.
    """
    if len(images) != len(expected_attrs):
        raise ValueError(f"{len(images)} images but {len(expected_attrs)} expected attributes")
    if not images:
        raise ValueError("no images to score")
    hits = dict.fromkeys((*ATTRIBUTE_NAMES, "all"), 0)
    for image, expected in zip(images, expected_attrs, strict=True):
        found = classify_image(image)
        right = [
            found is not None and getattr(found, name) == getattr(expected, name) for name in ATTRIBUTE_NAMES
        ]
        for name, ok in zip(ATTRIBUTE_NAMES, right, strict=True):
            hits[name] += ok
        hits["all"] += all(right)
    result: dict[str, object] = {name: count / len(images) for name, count in hits.items()}
    result["n"] = len(images)
    result["chance"] = chance_levels()
    return result


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
    return [Prompt(base_caption(attrs, rng), attrs) for attrs in _balanced_attributes(n, rng)]


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
    return [Prompt(domain_caption(attrs, rng, num_tags), attrs) for attrs in _balanced_attributes(n, rng)]


def make_domain_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_heldout: int,
    seed: int,
    *,
    size: int = 32,
    num_tags: int | tuple[int, int] = TRAIN_NUM_TAGS,
) -> dict[str, Path]:
    """Write `train/` and `heldout/`: NNNNN.png + NNNNN.txt (comma-separated tags), as the write-up's data.

    Each split also gets attributes.json ({stem: {"fg", "bg", "shape"}}), which the tools ignore.
    Returns {"train": path, "heldout": path}.
    """
    rng = np.random.default_rng(seed)
    folders = {}
    for split, count in (("train", n_train), ("heldout", n_heldout)):
        folder = Path(out_dir) / split
        folder.mkdir(parents=True, exist_ok=True)
        attrs_list = _balanced_attributes(count, rng)
        images = render_batch(attrs_list, size, rng).numpy() if count else []
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


def _balanced_attributes(n: int, rng: np.random.Generator) -> list[Attributes]:
    """`n` combinations: shuffled passes over all 90, so every combination appears equally often (+-1)."""
    combos = all_attributes()
    out: list[Attributes] = []
    while len(out) < n:
        out.extend(combos[i] for i in rng.permutation(len(combos)))
    return out[:n]
