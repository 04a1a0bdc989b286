from pathlib import Path

import pytest

from altadapter.data.tag_text import tag_spans
from altadapter.data.tags import TagFileError, find_tagged_images, join_tags, read_tag_file, split_tags

# The beginning and the end of the write-up's prompt #4, which switches to full-width commas mid-prompt.
WRITEUP_PROMPT_4 = (
    "1girl,solo,head tilt,front-tie bikini top,ocean,debris,tail,close-up,dated,"
    "grey background，非常详细，数字绘画，概念艺术，敏锐的焦点，插图"
)


def test_split_tags_handles_the_writeups_mixed_commas():
    tags = split_tags(WRITEUP_PROMPT_4)
    assert tags == [
        "1girl",
        "solo",
        "head tilt",
        "front-tie bikini top",
        "ocean",
        "debris",
        "tail",
        "close-up",
        "dated",
        "grey background",
        "非常详细",
        "数字绘画",
        "概念艺术",
        "敏锐的焦点",
        "插图",
    ]


def test_split_tags_strips_drops_empties_and_repeats_keeping_order():
    assert split_tags("  b , a,,b ,  , c,a,") == ["b", "a", "c"]
    assert split_tags("long   hair,long hair") == ["long hair"]
    assert split_tags(" , ,\n") == []


def test_split_tags_reads_one_tag_per_line_crlf_and_bom():
    assert split_tags("\ufeff1girl\r\nsolo\r\n\r\nsmile,\r\n") == ["1girl", "solo", "smile"]


def test_split_tags_underscores_to_spaces_keeps_kaomoji():
    text = "long_hair, ^_^, long hair, looking_at_viewer"
    assert split_tags(text) == ["long_hair", "^_^", "long hair", "looking_at_viewer"]
    assert split_tags(text, underscores_to_spaces=True) == ["long hair", "^_^", "looking at viewer"]


def test_tag_spans_keep_repeats_and_the_stretch_between_separators():
    text = "\ufeff1girl ,long_hair，  long   hair,,^_^"
    spans = tag_spans(text, underscores_to_spaces=True)
    assert [tag for _, _, tag in spans] == ["1girl", "long hair", "long hair", "^_^"]
    assert [text[start:end] for start, end, _ in spans] == [
        "\ufeff1girl ",
        "long_hair",
        "  long   hair",
        "^_^",
    ]
    # The same tags split_tags gives, before it drops the repeat.
    assert list(dict.fromkeys(tag for _, _, tag in spans)) == split_tags(text, underscores_to_spaces=True)


def test_join_tags_round_trips_through_split_tags():
    tags = ["1girl", "grey background", "非常详细"]
    assert join_tags(tags) == "1girl, grey background, 非常详细"
    assert split_tags(join_tags(tags)) == tags


def test_read_tag_file_with_bom_crlf_and_trailing_commas(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeff1girl, solo,\r\nred_bow,,\r\n".encode())
    assert read_tag_file(path) == ["1girl", "solo", "red_bow"]
    assert read_tag_file(path, underscores_to_spaces=True) == ["1girl", "solo", "red bow"]


def test_read_tag_file_names_the_file_when_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café, 1girl".encode("latin-1"))
    with pytest.raises(TagFileError, match=r"latin1\.txt: not UTF-8"):
        read_tag_file(path)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_find_tagged_images_pairs_sidecars(tmp_path):
    _touch(
        tmp_path,
        "a.png",
        "a.txt",
        "B.JPG",
        "B.caption",
        "both.webp",
        "both.txt",
        "both.caption",
        "sub/deeper/c.jpeg",
        "sub/deeper/c.TXT",
        "untagged.bmp",
        "orphan.txt",
        "notes.md",
        ".hidden/h.png",
        ".hidden/h.txt",
        "._a.png",
    )
    scan = find_tagged_images(tmp_path)
    pairs = {
        image.relative_to(tmp_path).as_posix(): tag_file and tag_file.relative_to(tmp_path).as_posix()
        for image, tag_file in ((item.image, item.tag_file) for item in scan.images)
    }
    assert pairs == {
        "a.png": "a.txt",
        "B.JPG": "B.caption",
        "both.webp": "both.txt",  # .txt wins over .caption
        "sub/deeper/c.jpeg": "sub/deeper/c.TXT",
        "untagged.bmp": None,
    }
    assert [path.relative_to(tmp_path).as_posix() for path in scan.orphan_tag_files] == ["orphan.txt"]


def test_find_tagged_images_order_is_stable(tmp_path):
    _touch(tmp_path, "z.png", "a.png", "m/b.png", "c/x.png")
    names = [item.image.relative_to(tmp_path).as_posix() for item in find_tagged_images(tmp_path).images]
    assert names == ["a.png", "z.png", "c/x.png", "m/b.png"]
