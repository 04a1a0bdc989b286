import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from altadapter.data.images import file_digest, load_image_tensor, resize_shorter_side
from altadapter.data.records import DatasetError, Record, open_rgb, scan_dataset


def three_bands(size=(48, 16)) -> Image.Image:
    """Red | green | blue vertical thirds: which colour survives tells where a crop was taken."""
    image = Image.new("RGB", size, (255, 0, 0))
    third = size[0] // 3
    image.paste((0, 255, 0), (third, 0, 2 * third, size[1]))
    image.paste((0, 0, 255), (2 * third, 0, size[0], size[1]))
    return image


def write_metadata(root: Path, rows: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def converted(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    three_bands().save(root / "bands.png")
    Image.new("RGBA", (20, 30), (0, 0, 0, 0)).save(root / "sub" / "clear.png")
    write_metadata(
        root,
        [
            {"file_name": "bands.png", "text": "1girl, solo"},
            {"file_name": "sub/clear.png", "text": "非常详细"},
        ],
    )
    return root


def test_scan_dataset_reads_metadata_in_order(converted):
    assert scan_dataset(converted) == [
        Record(converted / "bands.png", "1girl, solo"),
        Record(converted / "sub" / "clear.png", "非常详细"),
    ]


def test_scan_dataset_reads_a_plain_tagged_folder(tmp_path):
    three_bands().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("\ufeff1girl，solo,\r\nsmile,".encode())
    three_bands().save(tmp_path / "untagged.png")
    three_bands().save(tmp_path / "b.JPG", format="JPEG")
    (tmp_path / "b.caption").write_text("cat")
    assert scan_dataset(tmp_path) == [
        Record(tmp_path / "a.png", "1girl, solo, smile"),
        Record(tmp_path / "b.JPG", "cat"),
    ]


def test_scan_dataset_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; run `python meta_file_converter.py"):
        scan_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="holds no captioned images; run `python meta_file_converter.py"):
        scan_dataset(tmp_path)
    write_metadata(tmp_path / "gone", [{"file_name": "gone.png", "text": "a"}])
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:1: .*gone\.png is missing; re-run"):
        scan_dataset(tmp_path / "gone")
    write_metadata(tmp_path / "notext", [{"file_name": "x.png"}])
    with pytest.raises(DatasetError, match=r'metadata\.jsonl:1: each line needs "file_name" and "text"'):
        scan_dataset(tmp_path / "notext")
    write_metadata(tmp_path / "escape", [{"file_name": "../x.png", "text": "a"}])
    with pytest.raises(DatasetError, match="must be a path inside"):
        scan_dataset(tmp_path / "escape")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.jsonl").write_text('{"file_name": \n')
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:1: not valid JSON"):
        scan_dataset(tmp_path / "broken")


def test_open_rgb_scales_16_bit_instead_of_clipping(tmp_path):
    Image.new("I;16", (4, 4), 32896).save(tmp_path / "deep.png")  # 32896 / 257 = 128
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = open_rgb(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_open_rgb_puts_transparency_over_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "rgba.png")
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)
    rgba = open_rgb(tmp_path / "rgba.png")
    assert (rgba.getpixel((0, 0)), rgba.getpixel((1, 1))) == ((255, 0, 0), (255, 255, 255))
    assert open_rgb(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "extension"), [("CMYK", "jpg"), ("L", "bmp"), ("P", "png"), ("RGB", "webp")]
)
def test_open_rgb_other_modes(tmp_path, mode, extension):
    Image.new("RGB", (8, 8), (200, 40, 40)).convert(mode).save(tmp_path / f"x.{extension}")
    image = open_rgb(tmp_path / f"x.{extension}")
    assert (image.mode, image.size) == ("RGB", (8, 8))


def test_open_rgb_applies_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    assert open_rgb(tmp_path / "rotated.jpg").size == (10, 30)


def test_resize_shorter_side_keeps_aspect():
    assert resize_shorter_side(Image.new("RGB", (100, 50)), 16).size == (32, 16)
    assert resize_shorter_side(Image.new("RGB", (10, 30)), 16).size == (16, 48)


def test_load_image_tensor_center_crop_and_flip(tmp_path):
    image = Image.new("RGB", (48, 16), (255, 0, 0))
    image.paste((0, 0, 255), (24, 0, 48, 16))  # left half red, right half blue
    image.save(tmp_path / "halves.png")
    tensor = load_image_tensor(tmp_path / "halves.png", 16)
    assert (tensor.shape, tensor.dtype) == ((3, 16, 16), torch.float32)
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert torch.equal(tensor[:, :, 0], torch.tensor([1.0, -1.0, -1.0]).view(3, 1).expand(3, 16))  # red
    assert torch.equal(tensor[:, :, -1], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1).expand(3, 16))  # blue
    assert torch.equal(load_image_tensor(tmp_path / "halves.png", 16), tensor)  # deterministic
    assert torch.equal(load_image_tensor(tmp_path / "halves.png", 16, flip=True), tensor.flip(-1))


def test_resolution_must_be_a_multiple_of_8(converted):
    with pytest.raises(ValueError, match="resolution 20: must be a positive multiple of 8"):
        load_image_tensor(converted / "bands.png", 20)


def test_transparent_pixels_load_as_white(converted):
    assert torch.equal(load_image_tensor(converted / "sub" / "clear.png", 16), torch.ones(3, 16, 16))


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.png"):
        load_image_tensor(tmp_path / "bad.png", 8)


def test_file_digest_is_sha256_of_bytes(tmp_path):
    path = tmp_path / "a.png"
    three_bands().save(path)
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    before = file_digest(path)
    three_bands((48, 24)).save(path)
    assert file_digest(path) != before
