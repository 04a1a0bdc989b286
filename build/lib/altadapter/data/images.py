"""Training images as the VAE takes them: shorter side resized, centre-cropped, in [-1, 1]; a content key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from altadapter.data.records import DatasetError, open_rgb


def check_resolution(resolution: int, name: str = "resolution") -> None:
    """Raise ValueError unless `resolution` is a positive multiple of 8 (the VAE downsamples by 8)."""
    if resolution <= 0 or resolution % 8:
        raise ValueError(f"{name} {resolution}: must be a positive multiple of 8 (the VAE downsamples by 8)")


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    """Resize (Lanczos) so the shorter side is `resolution`, keeping the aspect ratio."""
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _crop_to_tensor(image: Image.Image, left: int, top: int, resolution: int, flip: bool) -> torch.Tensor:
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, R, R)
    return pixels.float() / 127.5 - 1.0


def _open_for_training(path: Path, resolution: int) -> Image.Image:
    try:
        return resize_shorter_side(open_rgb(path), resolution)
    except (
        Exception
    ) as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error... on bad data
        raise DatasetError(
            f"cannot read image {path}: {err}; meta_file_converter.py skips such files"
        ) from err


def load_image_tensor(path: str | os.PathLike, resolution: int, *, flip: bool = False) -> torch.Tensor:
    """Deterministic (3, R, R) tensor in [-1, 1]: shorter side resized to R, center crop, optional h-flip."""
    check_resolution(resolution)
    image = _open_for_training(Path(path), resolution)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return _crop_to_tensor(image, left, top, resolution, flip)


def file_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes: a content key that survives renames and catches edited images."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
