import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from altadapter.data.prompts import TagVocabulary, sample_prompts, write_prompts
from altadapter.data.tags import split_tags

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "1girl, solo, red bow, smile",
    "1girl，solo，非常详细，插图",
    "1girl, solo, smile, halo, smile",
    "1girl, cat, halo",
]


def vocab_of(counts: dict[str, int]) -> TagVocabulary:
    return TagVocabulary(Counter(counts), num_captions=max(counts.values()))


def test_vocabulary_counts_captions_per_tag():
    vocab = TagVocabulary.from_captions(CAPTIONS)
    assert vocab.num_captions == 4
    assert vocab.counts == Counter(
        {"1girl": 4, "solo": 3, "smile": 2, "halo": 2, "red bow": 1, "非常详细": 1, "插图": 1, "cat": 1}
    )
    assert vocab.ranked()[:4] == [("1girl", 4), ("solo", 3), ("halo", 2), ("smile", 2)]
    assert set(vocab.filtered(2).counts) == {"1girl", "solo", "smile", "halo"}


def test_format_stats_shows_size_and_top_tags():
    text = TagVocabulary.from_captions(CAPTIONS).format_stats(top_k=2)
    assert text.splitlines()[0] == "8 distinct tags in 4 captions; most common:"
    assert text.splitlines()[1:] == ["       4  1girl", "       3  solo"]


def test_same_seed_same_prompts_other_seed_other_prompts():
    vocab = vocab_of({f"tag{i}": i + 1 for i in range(100)})
    options = {"num_prompts": 5, "min_tags": 3, "max_tags": 8, "weighting": "uniform"}
    assert sample_prompts(vocab, seed=7, **options) == sample_prompts(vocab, seed=7, **options)
    assert sample_prompts(vocab, seed=7, **options) != sample_prompts(vocab, seed=8, **options)


@pytest.mark.parametrize("weighting", ["uniform", "frequency"])
def test_prompts_have_prefix_and_distinct_tags_in_range(weighting):
    vocab = vocab_of({"1girl": 50, "solo": 40, **{f"tag{i}": i + 1 for i in range(30)}})
    prompts = sample_prompts(
        vocab, num_prompts=40, min_tags=2, max_tags=6, weighting=weighting, prefix=["1girl", "solo"], seed=0
    )
    assert len(prompts) == 40
    lengths = set()
    for prompt in prompts:
        tags = split_tags(prompt)
        assert prompt.startswith("1girl, solo, ")
        assert len(tags) == len(prompt.split(", ")), "a tag was repeated"
        assert set(tags[2:]) <= set(vocab.counts) - {"1girl", "solo"}
        lengths.add(len(tags) - 2)
    assert lengths == {2, 3, 4, 5, 6}


def test_frequency_weighting_prefers_common_tags():
    vocab = vocab_of({"common": 1000, **{f"rare{i}": 1 for i in range(50)}})

    def picks_of_common(weighting: str) -> int:
        prompts = sample_prompts(vocab, num_prompts=200, min_tags=1, max_tags=1, weighting=weighting, seed=1)
        return prompts.count("common")

    assert picks_of_common("frequency") > 170  # expected 200 * 1000 / 1050 = 190
    assert picks_of_common("uniform") < 15  # expected 200 / 51 = 4


def test_prompt_length_is_capped_by_the_vocabulary():
    prompts = sample_prompts(
        vocab_of({"a": 1, "b": 1, "c": 1}), num_prompts=3, min_tags=5, max_tags=9, seed=0
    )
    assert all(sorted(split_tags(prompt)) == ["a", "b", "c"] for prompt in prompts)


def test_bad_arguments_are_refused():
    vocab = vocab_of({"a": 1})
    with pytest.raises(ValueError, match="min_tags <= max_tags"):
        sample_prompts(vocab, num_prompts=1, min_tags=4, max_tags=3)
    with pytest.raises(ValueError, match="weighting must be one of"):
        sample_prompts(vocab, num_prompts=1, min_tags=1, max_tags=1, weighting="zipf")
    with pytest.raises(ValueError, match="no tags to sample"):
        sample_prompts(vocab, num_prompts=1, min_tags=1, max_tags=1, prefix=["a"])


def test_write_prompts_one_utf8_line_each(tmp_path):
    write_prompts(tmp_path / "sub" / "prompts.txt", ["1girl, 非常详细", "solo"])
    assert (tmp_path / "sub" / "prompts.txt").read_bytes() == "1girl, 非常详细\nsolo\n".encode()


def make_dataset(root: Path, captions: list[str]) -> None:
    """A converted dataset: tiny images plus metadata.jsonl, as meta_file_converter.py writes it."""
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as handle:
        for i, caption in enumerate(captions):
            Image.new("RGB", (8, 8)).save(root / f"{i}.png")
            handle.write(json.dumps({"file_name": f"{i}.png", "text": caption}, ensure_ascii=False) + "\n")


def test_vocabulary_from_converted_and_plain_folders(tmp_path):
    make_dataset(tmp_path / "converted", CAPTIONS)
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, caption in enumerate(CAPTIONS):
        Image.new("RGB", (8, 8)).save(plain / f"{i}.png")
        (plain / f"{i}.txt").write_text(caption, encoding="utf-8")
    expected = TagVocabulary.from_captions(CAPTIONS)
    assert TagVocabulary.from_data_dir(tmp_path / "converted") == expected
    assert TagVocabulary.from_data_dir(plain) == expected


def test_script_end_to_end_is_reproducible(tmp_path):
    make_dataset(tmp_path / "data", [f"1girl, solo, tag{i}, tag{i + 1}, tag{i + 2}" for i in range(20)])
    outputs = []
    for name in ("a.txt", "b.txt"):
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "prompts_generator.py"),
                "--data_dir",
                str(tmp_path / "data"),
                "--num_prompts",
                "6",
                "--out",
                str(tmp_path / name),
                "--prefix",
                "1girl，solo",
                "--min_tags",
                "2",
                "--max_tags",
                "5",
                "--min_count",
                "2",
                "--seed",
                "3",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "24 distinct tags in 20 captions" in result.stdout
        assert "22 tags appear in at least 2 captions" in result.stdout  # tag0 and tag21 appear once
        outputs.append((tmp_path / name).read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert len(lines) == 6
    for line in lines:
        tags = split_tags(line)
        assert tags[:2] == ["1girl", "solo"]
        assert 2 <= len(tags) - 2 <= 5
        assert not {"tag0", "tag21"} & set(tags)
