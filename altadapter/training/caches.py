"""Compute once what never changes during training: VAE latents and, for the MLP, the encoder's outputs.

The VAE and (before an MLP adapter) the text encoder are frozen, so their outputs for a given image or
caption are fixed. Latents are stored as the VAE's Gaussian parameters (mean, log-variance), so each
step still draws a fresh latent sample, exactly as encoding every step would. Disk entries are keyed by
everything that changes them: base fingerprint, resolution, VAE dtype, flip and the image's bytes (a stale
fp16 cache reused in a bf16 run gave kohya users NaN losses).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from altadapter.data.images import content_digest, load_image_tensor
from altadapter.data.records import DatasetError, Record
from altadapter.encoding import encode_tokens, tokenize
from altadapter.fileio import atomic_replace_from, temp_path_beside
from altadapter.model import AltDiffusionBase

logger = logging.getLogger(__name__)


@dataclass
class LatentCache:
    """VAE posterior parameters per record: (N, F, 2C, h, w), F = 2 orientations with flips, else 1."""

    params: torch.Tensor
    records: list[Record]  # the records that could be read, in the order of `params`
    scaling: float  # the VAE's latent scaling factor (0.18215 for SD 1.x VAEs)

    def sample(self, indices: torch.Tensor, flips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (B, C, h, w) drawn from each record's posterior, as `latent_dist.sample()`."""
        params = self.params[indices, flips]  # (B, 2C, h, w)
        mean, logvar = params.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * self.scaling

    def mean(self, indices: torch.Tensor) -> torch.Tensor:
        """Deterministic scaled latents (the posterior means, unflipped), for validation."""
        return self.params[indices, 0].chunk(2, dim=1)[0] * self.scaling


def latent_key(base: AltDiffusionBase, resolution: int, digest: str, flip: bool) -> str:
    """The disk-cache key of one image's latents."""
    text = f"{base.info.fingerprint}|{resolution}|{base.vae.dtype}|{int(flip)}|{digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@torch.no_grad()
def _encode_images(base: AltDiffusionBase, pixels: torch.Tensor) -> torch.Tensor:
    moments = base.vae.encode(pixels.to(base.device, base.vae.dtype)).latent_dist.parameters
    return moments.float().cpu()


def build_latent_cache(
    base: AltDiffusionBase,
    records: Sequence[Record],
    *,
    resolution: int,
    random_flip: bool,
    cache_dir: str | Path | None = None,
    write: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> LatentCache:
    """Encode every record (both orientations with `random_flip`), reusing and (if `write`) filling the disk cache."""
    flips = (False, True) if random_flip else (False,)
    cache_dir = Path(cache_dir) if cache_dir else None
    entries: dict[tuple[int, bool], torch.Tensor] = {}
    pending: list[tuple[int, bool, str | None]] = []
    kept: list[int] = []
    skipped = 0
    for index, record in enumerate(tqdm(records, desc="checking latent cache", disable=not progress)):
        try:
            digest = content_digest(record.image) if cache_dir else None
        except OSError as error:
            logger.warning("skipping %s: %s", record.image, error)
            skipped += 1
            continue
        kept.append(index)
        for flip in flips:
            path = (
                cache_dir / f"{latent_key(base, resolution, digest, flip)}.safetensors" if cache_dir else None
            )
            if path is not None and path.is_file():
                entries[index, flip] = load_file(str(path))["params"]
            else:
                pending.append((index, flip, str(path) if path else None))
    bar = tqdm(total=len(pending), desc="encoding latents", disable=not progress or not pending)
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        pixels, ready = [], []
        for index, flip, path in chunk:
            try:
                pixels.append(load_image_tensor(records[index].image, resolution, flip=flip))
                ready.append((index, flip, path))
            except DatasetError as error:
                logger.warning("skipping: %s", error)
                if index in kept:
                    kept.remove(index)
                    skipped += 1
        if pixels:
            for (index, flip, path), params in zip(
                ready, _encode_images(base, torch.stack(pixels)), strict=True
            ):
                entries[index, flip] = params
                if path is not None and write:
                    tmp = temp_path_beside(path)
                    save_file({"params": params.contiguous()}, str(tmp))
                    atomic_replace_from(tmp, path)
        bar.update(len(chunk))
    bar.close()
    kept = [index for index in kept if all((index, flip) in entries for flip in flips)]
    if not kept:
        raise DatasetError(
            "no image of the dataset could be read; check the files or rerun meta_file_converter.py"
        )
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d", skipped, len(records))
    params = torch.stack([torch.stack([entries[index, flip] for flip in flips]) for index in kept])
    return LatentCache(params, [records[index] for index in kept], base.vae.config.scaling_factor)


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
