import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import datasets  # a pinned dependency: a missing install must fail, not skip
import pytest
from PIL import Image

from altadapter.data import convert
from altadapter.data.archives import ArchiveError
from altadapter.data.convert import ConversionError, convert_dataset
from altadapter.data.records import scan_dataset

REPO = Path(__file__).resolve().parents[1]

# Output file name -> caption, for every image of the messy folder that must be converted.
EXPECTED_TEXTS = {
    "rgb.png": "1girl, solo, red bow",
    "rgba.png": "1girl, transparent background",
    "palette.png": "pixel art",
    "gray.bmp": "greyscale",
    "cmyk.jpg": "1girl, print",
    "deep16.png": "monochrome, 16-bit",
    "UPPER.JPG": "upper case extension",
    "a/dup.png": "from folder a",
    "b/dup.png": "from folder b",
    "名前 with space.webp": "非常详细, 插图",
    "bom_crlf.png": "1girl, solo, smile",
    "lines.png": "one tag, per line",
}
EXPECTED_SKIPS = {
    "no tag file": 1,
    "empty tag file": 1,
    "tag file without image": 1,
    "unreadable tag file": 1,
    "unreadable image": 1,
    "zero-byte file": 1,
    "not an image": 1,
}


def _noise(mode: str, size=(24, 16)) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    data = random.Random(0).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, data)


def make_messy_folder(root: Path) -> None:
    """Every kind of real-world mess the converter must survive, in one folder tree."""
    root.mkdir(parents=True)

    def tags(name: str, text: str | bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    _noise("RGB").save(root / "rgb.png")
    tags("rgb.txt", "1girl, solo, red bow")
    _noise("RGBA").save(root / "rgba.png")
    tags("rgba.txt", "1girl,transparent background,")
    palette = _noise("RGB").convert("P")
    palette.info["transparency"] = 0
    palette.save(root / "palette.png")
    tags("palette.txt", "pixel art")
    _noise("L").save(root / "gray.bmp")
    tags("gray.txt", "greyscale")
    _noise("CMYK").save(root / "cmyk.jpg")
    tags("cmyk.txt", "1girl, print")
    Image.new("I;16", (16, 16), 40000).save(root / "deep16.png")
    tags("deep16.txt", "monochrome, 16-bit")
    _noise("RGB").save(root / "UPPER.JPG", format="JPEG")
    tags("UPPER.txt", "upper case extension")
    (root / "a").mkdir()
    (root / "b").mkdir()
    _noise("RGB").save(root / "a" / "dup.png")
    tags("a/dup.txt", "from folder a")
    _noise("RGB", (16, 24)).save(root / "b" / "dup.png")
    tags("b/dup.caption", "from folder b")
    _noise("RGB").save(root / "名前 with space.webp")
    tags("名前 with space.txt", "非常详细，插图")
    _noise("RGB").save(root / "bom_crlf.png")
    tags("bom_crlf.txt", "\ufeff1girl, solo,\r\nsmile,\r\n".encode())
    _noise("RGB").save(root / "lines.png")
    tags("lines.txt", "one tag\nper line\n")

    _noise("RGB").save(root / "untagged.png")
    _noise("RGB").save(root / "empty.png")
    tags("empty.txt", " , ,\n")
    tags("orphan.txt", "tags, without, an image")
    _noise("RGB").save(root / "latin1.png")
    tags("latin1.txt", "café".encode("latin-1"))
    _noise("RGB", (64, 64)).save(root / "truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    tags("truncated.txt", "cut short")
    (root / "zero.png").write_bytes(b"")
    tags("zero.txt", "nothing here")
    (root / "text.png").write_text("this is not a png")
    tags("text.txt", "liar")


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file, to prove the input is never modified."""
    return {
        path.relative_to(root).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def read_metadata(output_dir: Path) -> dict[str, str]:
    lines = (output_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len({row["file_name"] for row in rows}), "duplicate rows"
    return {row["file_name"]: row["text"] for row in rows}


@pytest.fixture
def messy(tmp_path) -> Path:
    root = tmp_path / "raw"
    make_messy_folder(root)
    return root


def test_converts_good_images_and_counts_every_skip(messy, tmp_path):
    before = snapshot(messy)
    summary = convert_dataset(messy, tmp_path / "out", progress=False)
    assert summary.converted == len(EXPECTED_TEXTS)
    assert dict(summary.skipped) == EXPECTED_SKIPS
    assert summary.skipped_names["no tag file"] == ["untagged.png"]
    assert summary.skipped_names["unreadable image"] == ["truncated.png"]
    assert read_metadata(tmp_path / "out") == EXPECTED_TEXTS
    for name in EXPECTED_TEXTS:
        assert (tmp_path / "out" / name).read_bytes() == (messy / name).read_bytes()
    assert snapshot(messy) == before


def test_summary_lists_counts_and_first_names(messy, tmp_path):
    text = convert_dataset(messy, tmp_path / "out", progress=False).format()
    assert f"converted {len(EXPECTED_TEXTS)} images" in text
    assert "skipped 7 files:" in text
    assert "tag file without image: 1 (orphan.txt)" in text
    assert "zero-byte file: 1 (zero.png)" in text


def test_converted_dataset_is_readable_by_the_training_reader(messy, tmp_path):
    convert_dataset(messy, tmp_path / "out", progress=False)
    records = scan_dataset(tmp_path / "out")
    assert {record.image.relative_to(tmp_path / "out").as_posix() for record in records} == set(
        EXPECTED_TEXTS
    )


def test_output_loads_with_datasets_imagefolder(messy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    convert_dataset(messy, tmp_path / "out", progress=False)
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "hf_cache")
    )
    assert loaded.num_rows == len(EXPECTED_TEXTS)
    assert sorted(loaded["text"]) == sorted(EXPECTED_TEXTS.values())
    sizes = {row["text"]: row["image"].size for row in loaded}
    assert sizes["from folder b"] == (16, 24)  # duplicate stems kept apart
    assert sizes["monochrome, 16-bit"] == (16, 16)


def test_rerun_is_idempotent(messy, tmp_path):
    out = tmp_path / "out"
    convert_dataset(messy, out, progress=False)
    first = snapshot(out)
    summary = convert_dataset(messy, out, progress=False)
    assert dict(summary.written) == {"unchanged": len(EXPECTED_TEXTS)}
    second = snapshot(out)
    assert second.pop("metadata.jsonl")[0] == first.pop("metadata.jsonl")[0]
    assert second == first  # images not even rewritten: same bytes, same mtimes


def test_rerun_drops_images_whose_source_vanished(messy, tmp_path):
    out = tmp_path / "out"
    convert_dataset(messy, out, progress=False)
    (messy / "a" / "dup.png").unlink()
    (messy / "rgb.txt").unlink()
    summary = convert_dataset(messy, out, progress=False)
    assert summary.removed_stale == 2
    assert set(read_metadata(out)) == set(EXPECTED_TEXTS) - {"a/dup.png", "rgb.png"}
    assert not (out / "a" / "dup.png").exists()
    assert not (out / "rgb.png").exists()


def test_link_hard_links_and_copy_run_afterwards_unlinks(messy, tmp_path):
    out = tmp_path / "out"
    summary = convert_dataset(messy, out, link=True, progress=False)
    assert summary.written["hard-linked"] == len(EXPECTED_TEXTS)
    assert os.path.samefile(out / "rgb.png", messy / "rgb.png")
    assert dict(convert_dataset(messy, out, link=True, progress=False).written) == {
        "unchanged": len(EXPECTED_TEXTS)
    }
    before = snapshot(messy)
    convert_dataset(messy, out, progress=False)
    assert not os.path.samefile(out / "rgb.png", messy / "rgb.png")
    assert snapshot(messy) == before


def test_underscores_to_spaces(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _noise("RGB").save(raw / "x.png")
    (raw / "x.txt").write_text("long_hair, ^_^, looking_at_viewer")
    convert_dataset(raw, tmp_path / "out", underscores_to_spaces=True, progress=False)
    assert read_metadata(tmp_path / "out") == {"x.png": "long hair, ^_^, looking at viewer"}


@pytest.mark.parametrize("pixels_over_limit", [2, 4])  # Pillow warns past the limit, errors at twice it
def test_enormous_images_are_skipped(tmp_path, monkeypatch, pixels_over_limit):
    raw = tmp_path / "raw"
    raw.mkdir()
    _noise("RGB", (32, 32)).save(raw / "huge.png")
    (raw / "huge.txt").write_text("huge")
    _noise("RGB", (8, 8)).save(raw / "small.png")
    (raw / "small.txt").write_text("small")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32 // pixels_over_limit + 1)
    summary = convert_dataset(raw, tmp_path / "out", progress=False)
    assert dict(summary.skipped) == {"image too large": 1}
    assert read_metadata(tmp_path / "out") == {"small.png": "small"}


def test_strict_fails_before_writing_anything(messy, tmp_path):
    with pytest.raises(ConversionError, match=r"--strict(.|\n)*no tag file: 1 \(untagged\.png\)"):
        convert_dataset(messy, tmp_path / "out", strict=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_nothing_to_convert_is_an_error(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "orphan.txt").write_text("a, b")
    with pytest.raises(ConversionError, match=r"no image in .* could be converted(.|\n)*orphan\.txt"):
        convert_dataset(tmp_path / "raw", tmp_path / "out", progress=False)


@pytest.mark.parametrize("output", ["raw", "raw/out", "."])
def test_overlapping_folders_are_refused(messy, tmp_path, output):
    with pytest.raises(ConversionError, match="must not contain each other"):
        convert_dataset(messy, tmp_path / output, progress=False)


def test_crash_while_writing_metadata_keeps_the_old_file(messy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_dataset(messy, out, progress=False)
    old = (out / "metadata.jsonl").read_bytes()
    (messy / "new.png").write_bytes((messy / "rgb.png").read_bytes())
    (messy / "new.txt").write_text("new")
    rows_written = []
    real_dumps = json.dumps

    def dumps_then_crash(row, **kwargs):
        if rows_written:
            raise KeyboardInterrupt
        rows_written.append(row)
        return real_dumps(row, **kwargs)

    monkeypatch.setattr(convert.json, "dumps", dumps_then_crash)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(messy, out, progress=False)
    assert (out / "metadata.jsonl").read_bytes() == old
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def make_kohya_folder(root: Path) -> Path:
    """kohya's layout: N_concept folders (N repeats per epoch), a picture without tags in one, and a plain one."""
    for name, tags in {
        "10_alice/a.png": "alice, red hair",
        "10_alice/untagged.png": None,
        "3_bob cat/b.png": "bob",
        "plain/c.png": "plain",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _noise("RGB").save(root / name)
        if tags:
            (root / name).with_suffix(".txt").write_text(tags, encoding="utf-8")
    return root


KOHYA_ROWS = [
    {"file_name": "10_alice/a.png", "text": "alice, red hair", "repeats": 10},
    {"file_name": "10_alice/untagged.png", "text": "alice", "repeats": 10},
    {"file_name": "3_bob cat/b.png", "text": "bob", "repeats": 3},
    {"file_name": "plain/c.png", "text": "plain"},
]


def test_kohya_folders_keep_their_repeats_and_caption_untagged_pictures_by_concept(tmp_path):
    raw = make_kohya_folder(tmp_path / "raw")
    summary = convert_dataset(raw, tmp_path / "out", progress=False)
    assert "repeated N times per epoch: 10_alice (2), 3_bob cat (1)" in summary.format()
    lines = (tmp_path / "out" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == KOHYA_ROWS
    for folder in (tmp_path / "out", raw):  # converted, and trained on as it is
        assert [(r.caption, r.repeats) for r in scan_dataset(folder)] == [
            ("alice, red hair", 10),
            ("alice", 10),
            ("bob", 3),
            ("plain", 1),
        ]


def pack(folder: Path, archive: Path) -> Path:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as packed:
            for path in files:
                packed.write(path, path.relative_to(folder).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as packed:
            for path in files:
                packed.add(path, path.relative_to(folder).as_posix())
    return archive


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_a_zip_or_tar_converts_as_its_folder_does(suffix, tmp_path):
    raw = make_kohya_folder(tmp_path / "raw")
    archive = pack(raw, tmp_path / f"dump{suffix}")
    summary = convert_dataset(archive, tmp_path / "out", progress=False)
    assert summary.converted == 4 and not summary.skipped
    lines = (tmp_path / "out" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == KOHYA_ROWS
    assert (tmp_path / "out" / "3_bob cat" / "b.png").read_bytes() == (
        raw / "3_bob cat" / "b.png"
    ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "10_alice",
        "3_bob cat",
        "metadata.jsonl",
        "plain",
    ]
    # Members keep their times, so converting the archive again rewrites nothing.
    assert dict(convert_dataset(archive, tmp_path / "out", progress=False).written) == {"unchanged": 4}


def test_an_empty_broken_or_crafted_archive_is_refused_in_one_line(tmp_path):
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as packed:
        packed.writestr("readme.txt", "no pictures here")
    with pytest.raises(ConversionError, match=r"^no image in .*empty\.zip could be converted"):
        convert_dataset(tmp_path / "empty.zip", tmp_path / "out", progress=False)
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(ArchiveError, match=r"^--image_dir .*broken\.zip: not a readable zip or tar archive"):
        convert_dataset(tmp_path / "broken.zip", tmp_path / "out", progress=False)
    with zipfile.ZipFile(tmp_path / "crafted.zip", "w") as packed:
        packed.writestr("../escape.png", b"x")
    with pytest.raises(ArchiveError, match="member '../escape.png' would land outside"):
        convert_dataset(tmp_path / "crafted.zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.png").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]  # no unpacked leftovers


def test_script_end_to_end(messy, tmp_path):
    out = tmp_path / "out dir"
    command = [
        sys.executable,
        str(REPO / "meta_file_converter.py"),
        "--image_dir",
        str(messy),
        "--output_dir",
    ]
    result = subprocess.run([*command, str(out)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert f"converted {len(EXPECTED_TEXTS)} images" in result.stdout
    assert "no tag file: 1 (untagged.png)" in result.stdout
    assert read_metadata(out) == EXPECTED_TEXTS

    strict = subprocess.run(
        [*command, str(tmp_path / "strict"), "--strict"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert strict.returncode == 2
    assert "error: --strict" in strict.stderr
    assert not (tmp_path / "strict").exists()
