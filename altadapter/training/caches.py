"""Compute once what never changes during training: VAE latents and, for the MLP, the encoder's outputs.

The VAE and (before an MLP adapter) the text encoder are frozen, so their outputs for a given image or
caption are fixed. Latents are stored as the VAE's Gaussian parameters (mean, log-variance), so each
step still draws a fresh latent sample, exactly as encoding every step would. Each distinct picture (by the
digest of its bytes) is encoded once, at the square --resolution or, with buckets, at the bucket nearest its
aspect; records that share a picture share its latents. Disk entries are keyed by everything that changes
them: base fingerprint, size, VAE dtype, flip and the image's bytes (a stale fp16 cache reused in a bf16 run
gave kohya users NaN losses).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from altadapter.data.buckets import nearest_bucket
from altadapter.data.images import Size, content_digest, image_size, load_image_tensor
from altadapter.data.records import DatasetError, ImageSource, Record
from altadapter.encoding import encode_tokens, tokenize
from altadapter.fileio import write_safetensors
from altadapter.model import AltDiffusionBase

logger = logging.getLogger(__name__)


@dataclass
class LatentCache:
    """VAE posterior parameters of each distinct picture, in one group per size (per bucket).

    params[g]: (N_g, F, 2C, h_g, w_g), F = 2 orientations with flips, else 1; sizes[g] is the group's
    (width, height) in pixels; record i's picture is row location[i][1] of group location[i][0].
    """

    params: list[torch.Tensor]
    sizes: list[Size]
    records: list[Record]  # the records whose picture could be read
    location: list[tuple[int, int]]
    scaling: float  # the VAE's latent scaling factor (0.18215 for SD 1.x VAEs)

    def groups(self) -> list[list[int]]:
        """The record indices of each size group, in record order."""
        groups: list[list[int]] = [[] for _ in self.sizes]
        for index, (group, _) in enumerate(self.location):
            groups[group].append(index)
        return groups

    def _rows(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters of the group all `indices` belong to, and their rows in it."""
        located = [self.location[i] for i in indices.tolist()]
        groups = {group for group, _ in located}
        if len(groups) != 1:
            raise ValueError(f"records of one batch must share a size; these are in groups {sorted(groups)}")
        return self.params[groups.pop()], torch.tensor([row for _, row in located])

    def sample(self, indices: torch.Tensor, flips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (B, C, h, w) drawn from each record's posterior, as `latent_dist.sample()`."""
        params, rows = self._rows(indices)
        mean, logvar = params[rows, flips].chunk(2, dim=1)  # (B, 2C, h, w) -> 2 x (B, C, h, w)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * self.scaling

    def mean(self, indices: torch.Tensor) -> torch.Tensor:
        """Deterministic scaled latents (the posterior means, unflipped), for validation."""
        params, rows = self._rows(indices)
        return params[rows, 0].chunk(2, dim=1)[0] * self.scaling


def latent_key(base: AltDiffusionBase, size: Size, digest: str, flip: bool) -> str:
    """The disk-cache key of one image's latents; a square size is written as one number, as it always was."""
    side = str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"
    text = f"{base.info.fingerprint}|{side}|{base.vae.dtype}|{int(flip)}|{digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Picture:
    """One distinct picture: where to read it, the digest of its bytes, the size it is encoded at."""

    image: Path | ImageSource
    digest: str
    size: Size


def _distinct_pictures(
    records: Sequence[Record], resolution: int, buckets: list[Size] | None, progress: bool
) -> tuple[list[_Picture], list[int | None]]:
    """The records' distinct pictures, and each record's picture (None where it cannot be read)."""
    pictures: list[_Picture] = []
    by_digest: dict[str, int] = {}
    picture_of: list[int | None] = []
    for record in tqdm(records, desc="checking latent cache", disable=not progress):
        try:
            digest = content_digest(record.image)
            if digest not in by_digest:
                size = nearest_bucket(image_size(record.image), buckets) if buckets else (resolution,) * 2
                by_digest[digest] = len(pictures)
                pictures.append(_Picture(record.image, digest, size))
            picture_of.append(by_digest[digest])
        except Exception as error:  # OSError, and Pillow's many errors on a bad header
            logger.warning("skipping %s: %s", record.image, error)
            picture_of.append(None)
    return pictures, picture_of


@torch.no_grad()
def _encode_images(base: AltDiffusionBase, pixels: torch.Tensor) -> torch.Tensor:
    moments = base.vae.encode(pixels.to(base.device, base.vae.dtype)).latent_dist.parameters
    return moments.float().cpu()


def _latents(
    base: AltDiffusionBase,
    pictures: list[_Picture],
    flips: tuple[bool, ...],
    *,
    cache_dir: Path | None,
    write: bool,
    batch_size: int,
    progress: bool,
) -> dict[tuple[int, bool], torch.Tensor]:
    """Posterior parameters per (picture, flip), from the disk cache or encoded (and stored if `write`)."""
    entries: dict[tuple[int, bool], torch.Tensor] = {}
    pending: list[tuple[int, bool, str | None]] = []
    for index, picture in enumerate(pictures):
        for flip in flips:
            key = latent_key(base, picture.size, picture.digest, flip)
            path = cache_dir / f"{key}.safetensors" if cache_dir else None
            if path is not None and path.is_file():
                entries[index, flip] = load_file(str(path))["params"]
            else:
                pending.append((index, flip, str(path) if path else None))
    pending.sort(key=lambda item: pictures[item[0]].size)  # one size per encoder batch; stable within it
    bar = tqdm(total=len(pending), desc="encoding latents", disable=not progress or not pending)
    for size, group in itertools.groupby(pending, key=lambda item: pictures[item[0]].size):
        group = list(group)
        for start in range(0, len(group), batch_size):
            chunk, pixels, ready = group[start : start + batch_size], [], []
            for index, flip, path in chunk:
                try:
                    pixels.append(load_image_tensor(pictures[index].image, size, flip=flip))
                    ready.append((index, flip, path))
                except DatasetError as error:
                    logger.warning("skipping: %s", error)
            if pixels:
                for (index, flip, path), params in zip(
                    ready, _encode_images(base, torch.stack(pixels)), strict=True
                ):
                    entries[index, flip] = params
                    if path is not None and write:
                        write_safetensors(Path(path), {"params": params.contiguous()})
            bar.update(len(chunk))
    bar.close()
    return entries


def build_latent_cache(
    base: AltDiffusionBase,
    records: Sequence[Record],
    *,
    resolution: int,
    random_flip: bool,
    buckets: list[Size] | None = None,
    cache_dir: str | Path | None = None,
    write: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> LatentCache:
    """Encode every distinct picture once (both orientations with `random_flip`), at the square `resolution`
    or the nearest of `buckets`, reusing and (if `write`) filling the disk cache."""
    flips = (False, True) if random_flip else (False,)
    pictures, picture_of = _distinct_pictures(records, resolution, buckets, progress)
    entries = _latents(
        base,
        pictures,
        flips,
        cache_dir=Path(cache_dir) if cache_dir else None,
        write=write,
        batch_size=batch_size,
        progress=progress,
    )
    readable = [p for p in range(len(pictures)) if all((p, flip) in entries for flip in flips)]
    sizes = sorted({pictures[p].size for p in readable})
    params, rows = [], {}
    for group, size in enumerate(sizes):
        members = [p for p in readable if pictures[p].size == size]
        rows.update({p: (group, row) for row, p in enumerate(members)})
        params.append(torch.stack([torch.stack([entries[p, flip] for flip in flips]) for p in members]))
    kept = [index for index, p in enumerate(picture_of) if p in rows]
    if not kept:
        raise DatasetError(
            "no image of the dataset could be read; check the files or rerun meta_file_converter.py"
        )
    if len(kept) < len(records):
        logger.warning("skipped %d unreadable image(s) of %d", len(records) - len(kept), len(records))
    location = [rows[picture_of[index]] for index in kept]
    return LatentCache(params, sizes, [records[i] for i in kept], location, base.vae.config.scaling_factor)


@torch.no_grad()
def build_text_cache(
    base: AltDiffusionBase, captions: Sequence[str], *, batch_size: int = 16, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Original conditioning (L, D) per distinct caption, on the CPU in the base's dtype."""
    unique = list(dict.fromkeys(captions))
    cache: dict[str, torch.Tensor] = {}
    for start in tqdm(
        range(0, len(unique), batch_size), desc="encoding captions", disable=not progress or not unique
    ):
        chunk = unique[start : start + batch_size]
        ids, mask = tokenize(base, chunk, base.info.model_max_length)
        for caption, conditioning in zip(chunk, encode_tokens(base, ids, mask).cpu(), strict=True):
            cache[caption] = conditioning
    return cache
