"""Training images as the VAE takes them: resized to cover a size, centre-cropped, in [-1, 1]; a content key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from altadapter.data.records import DatasetError, ImageSource, image_input, open_rgb

Size = tuple[int, int]  # (width, height) in pixels, as Pillow orders them
# EXIF orientations that turn the picture a quarter: its stored width is the height it is shown at.
_QUARTER_TURNS = (5, 6, 7, 8)


def check_resolution(resolution: int, name: str = "resolution") -> None:
    """Raise ValueError unless `resolution` is a positive multiple of 8 (the VAE downsamples by 8)."""
    if resolution <= 0 or resolution % 8:
        raise ValueError(f"{name} {resolution}: must be a positive multiple of 8 (the VAE downsamples by 8)")


def resize_to_cover(image: Image.Image, size: Size) -> Image.Image:
    """Resize (Lanczos), keeping the aspect ratio, to the smallest size that covers `size`."""
    scale = max(size[0] / image.width, size[1] / image.height)
    target = (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS)


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    """Resize (Lanczos) so the shorter side is `resolution`, keeping the aspect ratio."""
    return resize_to_cover(image, (resolution, resolution))


def image_size(source: str | os.PathLike | ImageSource) -> Size:
    """(width, height) a picture is shown at (EXIF rotation applied), from its header alone."""
    with Image.open(image_input(source)) as image:
        width, height = image.size
        turned = image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    return (height, width) if turned else (width, height)


def _open_for_training(source: Path | ImageSource, size: Size) -> Image.Image:
    try:
        return resize_to_cover(open_rgb(source), size)
    except (
        Exception
    ) as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error... on bad data
        raise DatasetError(
            f"cannot read image {source}: {err}; meta_file_converter.py skips such files"
        ) from err


def load_image_tensor(
    source: str | os.PathLike | ImageSource, size: int | Size, *, flip: bool = False
) -> torch.Tensor:
    """Deterministic (3, H, W) tensor in [-1, 1]: resized to cover `size` (an int: a square), centre crop,
    optional h-flip."""
    if isinstance(size, int):
        check_resolution(size)
        size = (size, size)
    for side, name in zip(size, ("width", "height"), strict=True):
        check_resolution(side, name)
    width, height = size
    image = _open_for_training(Path(source) if isinstance(source, str) else source, (width, height))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)
    return pixels.float() / 127.5 - 1.0


def file_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes: a content key that survives renames and catches edited images."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(source: str | os.PathLike | ImageSource) -> str:
    """`file_digest` of a picture wherever its bytes are: the same picture in a folder or a dataset, one key."""
    if isinstance(source, str | os.PathLike):
        return file_digest(source)
    return hashlib.sha256(source.read_bytes()).hexdigest()
