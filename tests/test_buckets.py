"""Aspect-ratio buckets: kohya's sizes, the nearest bucket of a picture, and pictures loaded at a bucket's size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_images import three_bands

from altadapter.data.buckets import BucketRange, nearest_bucket
from altadapter.data.images import image_size, load_image_tensor


def test_the_defaults_are_kohyas_scaled_to_the_resolution():
    kohya = BucketRange.scaled(512, None, None, None)
    assert (kohya.min_reso, kohya.max_reso, kohya.steps) == (256, 1024, 64)
    assert BucketRange.scaled(1024, None, None, None).steps == 128
    sizes = kohya.sizes()
    assert (512, 512) in sizes and (704, 320) in sizes and (320, 704) in sizes
    assert all(w * h <= 512 * 512 and min(w, h) >= 256 and max(w, h) <= 1024 for w, h in sizes)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in sizes)


def test_a_picture_goes_to_the_bucket_nearest_its_aspect():
    sizes = BucketRange.scaled(24, None, None, None).sizes()
    assert sizes == [(16, 32), (24, 24), (32, 16)]
    assert nearest_bucket((200, 100), sizes) == (32, 16)  # 2:1 in 2:1
    assert nearest_bucket((100, 200), sizes) == (16, 32)
    assert nearest_bucket((110, 100), sizes) == (24, 24)


def test_a_range_that_holds_no_bucket_is_refused_with_the_default():
    with pytest.raises(
        ValueError, match=r"^--min_bucket_reso 640 to --max_bucket_reso 1024 \(steps of 64\) holds no"
    ):
        BucketRange.scaled(512, 640, None, None)
    with pytest.raises(
        ValueError, match="--min_bucket_reso 256 --max_bucket_reso 1024 --bucket_reso_steps 64"
    ):
        BucketRange.scaled(512, 600, 560, None)
    with pytest.raises(ValueError, match="--bucket_reso_steps 12: must be a positive multiple of 8"):
        BucketRange.scaled(512, None, None, 12)


def test_a_wide_picture_keeps_its_sides_in_a_wide_bucket(tmp_path):
    three_bands((48, 16)).save(tmp_path / "bands.png")  # red | green | blue thirds
    wide = load_image_tensor(tmp_path / "bands.png", (24, 8))
    square = load_image_tensor(tmp_path / "bands.png", 8)
    assert wide.shape == (3, 8, 24) and square.shape == (3, 8, 8)
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    assert torch.equal(wide[:, 4, 0], red) and torch.equal(wide[:, 4, -1], blue)
    assert not torch.equal(square[:, 4, 0], red)  # a square crop loses both sides
    assert torch.equal(load_image_tensor(tmp_path / "bands.png", (8, 8)), square)


def test_image_size_reads_the_header_and_the_exif_rotation(tmp_path):
    picture = Image.new("RGB", (30, 10))
    exif = picture.getexif()
    exif[0x0112] = 6  # rotated a quarter: shown 10 wide, 30 high
    picture.save(tmp_path / "turned.jpg", exif=exif)
    picture.save(tmp_path / "plain.png")
    assert image_size(tmp_path / "turned.jpg") == (10, 30)
    assert image_size(tmp_path / "plain.png") == (30, 10)
