"""The demo's toy world: coloured shapes on coloured backgrounds, their renderer and a classifier.

What the pictures say in words lives in `toy.captions`.

Three attributes, all readable from a picture of any size and aspect (32x32 in the toy base's world) by
`classify_image`, a transparent rule:
every pixel takes its nearest palette colour; the background is the most common colour on the border ring,
the foreground the most common other colour; a foreground that fills its bounding box is a square, one
with far fewer pixels in the upper half of its box than in the lower is an (apex-up) triangle, else a circle.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

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
    attrs: Sequence[Attributes],
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Render scenes with random position, size and colour jitter: (N, height, width, 3) uint8 on `device`.

    `size` is the side of a square or (width, height). The shape is centred within +-6% of the shorter side,
    its radius 22-30% of that side, so it never touches the border ring (3 pixels at 32) the classifier
    reads the background from, and a centre square crop of a wide picture keeps all of it. 4x4
    supersampling anti-aliases. Jitter is drawn from `rng` (numpy, so results do not depend on the device);
    the pixels are computed by torch on `device`, which renders a training pool on a GPU in moments.
    """
    width, height = (size, size) if isinstance(size, int) else size
    n, ss, short = len(attrs), 4, min(width, height)
    middle = np.array([width / 2, height / 2])
    centre = torch.as_tensor(middle + rng.uniform(-0.06, 0.06, (n, 2)) * short, dtype=torch.float32)
    radius = torch.as_tensor(rng.uniform(0.22, 0.30, n) * short, dtype=torch.float32)
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (2, n, 3))
    fg = torch.as_tensor([PALETTE[a.fg] for a in attrs] + jitter[0], dtype=torch.float32, device=device)
    bg = torch.as_tensor([PALETTE[a.bg] for a in attrs] + jitter[1], dtype=torch.float32, device=device)
    shape_index = np.array([SHAPES.index(a.shape) for a in attrs])
    # Sub-pixel centres along each axis.
    xs = (torch.arange(width * ss, dtype=torch.float32, device=device) + 0.5) / ss
    ys = (torch.arange(height * ss, dtype=torch.float32, device=device) + 0.5) / ss
    coverage = torch.empty(n, height, width, 1, device=device)
    for kind, shape in enumerate(SHAPES):
        # In chunks, which bound the (chunk, 4 size, 4 size) sub-pixel masks.
        for part in np.array_split(np.flatnonzero(shape_index == kind), max(1, n // 4096)):
            if len(part) == 0:
                continue
            x = xs[None, None, :] - centre[part, 0, None, None].to(device)  # (M, 1, W ss) from the centre
            y = ys[None, :, None] - centre[part, 1, None, None].to(device)  # (M, H ss, 1)
            r = radius[part, None, None].to(device)
            if shape == "circle":
                mask = x**2 + y**2 <= r**2
            elif shape == "square":
                mask = (x.abs() <= 0.9 * r) & (y.abs() <= 0.9 * r)
            else:  # apex up at -r, base at +0.8 r, half-width 1.05 r at the base
                depth = (y + r) / (1.8 * r)
                mask = (depth >= 0) & (depth <= 1) & (x.abs() <= 1.05 * r * depth)
            part = torch.as_tensor(part, device=device)
            coverage[part] = mask.view(-1, height, ss, width, ss).float().mean(dim=(2, 4))[..., None]
    image = coverage * fg[:, None, None] + (1 - coverage) * bg[:, None, None]  # (N, H, W, 3)
    return image.round_().clamp_(0, 255).to(torch.uint8)


def render_scene(attrs: Attributes, size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One scene as an RGB PIL image of `size` pixels (a square's side, or (width, height))."""
    return Image.fromarray(render_batch([attrs], size, rng)[0].numpy(), mode="RGB")


# --- the transparent classifier ----------------------------------------------------------------------------


def _palette_labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of each pixel: (..., 3) -> (...)."""
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    distances = ((pixels[..., None, :].astype(np.float64) - palette) ** 2).sum(-1)
    return distances.argmin(-1)


def classify_image(image: Image.Image | np.ndarray) -> Attributes | None:
    """Read fg, bg and shape from a picture; None when no foreground colour is found at all.

    bg: the most common nearest-palette colour on the border ring (1/10 of the shorter side, at least 2 px).
    fg: the most common other colour inside. shape: fill ratio of the fg pixels in their bounding box,
    and for the rest, the share of fg pixels in the upper half of that box (an apex-up triangle has 1/4).
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = _palette_labels(pixels)  # (H, W)
    ring = max(2, round(min(labels.shape) / 10))
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


def balanced_attributes(n: int, rng: np.random.Generator) -> list[Attributes]:
    """`n` combinations: shuffled passes over all 90, so every combination appears equally often (+-1)."""
    combos = all_attributes()
    out: list[Attributes] = []
    while len(out) < n:
        out.extend(combos[i] for i in rng.permutation(len(combos)))
    return out[:n]
