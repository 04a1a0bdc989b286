"""The vocab adapter: whole-tag matching anywhere in a prompt, and the original model for every other word."""

from __future__ import annotations

import logging

import pytest
import torch

from altadapter.adapters.conditioning import encode_prompt_pair, encode_text
from altadapter.adapters.vocab import (
    VocabAdapter,
    VocabConfig,
    VocabKind,
    VocabOptions,
    vocab_init_from_pieces,
)
from altadapter.adapters.vocab_tokens import tokenize_with_tags
from altadapter.encoding import tokenize

TAGS = ("lappland", "安洁莉娜", "long hair", "^_^")
UNTAGGED = [
    "1girl, solo, red hair",
    "a cat on a blue house，simple background",
    "lappland (refined), lapplands",
]
TAGGED = ["1girl，lappland，solo", "安洁莉娜, long_hair, 1girl"]


def vocab_for(base, vectors_per_tag: int = 1, tags: tuple[str, ...] = TAGS) -> VocabAdapter:
    """A vocab adapter with random vectors, far from any word (a trained-looking one)."""
    torch.manual_seed(0)
    config = VocabConfig(dim=base.info.hidden_size, tags=tags, vectors_per_tag=vectors_per_tag)
    return VocabAdapter(config, torch.randn(config.num_vectors, config.dim))


def tokens_of(base, prompt: str, config: VocabConfig) -> list[str]:
    """The prompt's tokens as text, a placeholder as its tag (with `#k` when a tag has several vectors)."""
    ids, mask = tokenize_with_tags(base, [prompt], config, base.info.model_max_length)
    words = base.text_encoder.get_input_embeddings().num_embeddings
    n = config.vectors_per_tag
    out = []
    for token in ids[0][mask[0].bool()].tolist():
        if token < words:
            out.append(base.tokenizer.convert_ids_to_tokens(token))
        else:
            tag, k = divmod(token - words, n)
            out.append(config.tags[tag] + (f"#{k}" if n > 1 else ""))
    return out


# As diffusers' textual inversion tokenizes a tag's added token: the space before it goes, and the piece
# after it starts a new word ("▁,").
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("lappland, 1girl", ["<s>", "lappland", "▁,", "▁1girl", "</s>"]),
        ("1girl, lappland, solo", ["<s>", "▁1girl", ",", "lappland", "▁,", "▁solo", "</s>"]),
        ("1girl, solo,lappland", ["<s>", "▁1girl", ",", "▁solo", ",", "lappland", "</s>"]),
        # Full-width commas (unknown to the tiny tokenizer, hence <unk>) separate tags too.
        (
            "1girl，lappland，solo",
            ["<s>", "▁1girl", "<unk>", "lappland", "▁", "<unk>", "s", "o", "l", "o", "</s>"],
        ),
        # CJK: one <unk> (and a "▁") in the tiny tokenizer, several pieces in XLM-R's; one token either way.
        ("安洁莉娜, 1girl", ["<s>", "安洁莉娜", "▁,", "▁1girl", "</s>"]),
        # Underscores, whitespace runs and padding are normalised as the dataset's captions are.
        ("1girl, long_hair", ["<s>", "▁1girl", ",", "long hair", "</s>"]),
        ("1girl,   long    hair  ", ["<s>", "▁1girl", ",", "long hair", "</s>"]),
        ("^_^, solo", ["<s>", "^_^", "▁,", "▁solo", "</s>"]),
        ("lappland, solo, lappland", ["<s>", "lappland", "▁,", "▁solo", ",", "lappland", "</s>"]),
    ],
)
def test_whole_tags_become_their_token_wherever_they_stand(tiny_base, prompt, expected):
    assert tokens_of(tiny_base, prompt, vocab_for(tiny_base).config) == expected


def test_each_tag_takes_vectors_per_tag_tokens(tiny_base):
    config = vocab_for(tiny_base, vectors_per_tag=3).config
    assert tokens_of(tiny_base, "1girl, 安洁莉娜", config) == [
        "<s>",
        "▁1girl",
        ",",
        *[f"安洁莉娜#{k}" for k in range(3)],
        "</s>",
    ]


def test_parts_of_tags_and_longer_tags_are_left_as_words(tiny_base):
    config = vocab_for(tiny_base).config
    for prompt in UNTAGGED:
        ids, mask = tokenize_with_tags(tiny_base, [prompt], config, tiny_base.info.model_max_length)
        plain_ids, plain_mask = tokenize(tiny_base, [prompt], tiny_base.info.model_max_length)
        assert torch.equal(ids, plain_ids) and torch.equal(mask, plain_mask)


def test_a_long_tagged_prompt_is_cut_before_its_end_token_with_a_warning(tiny_base, caplog):
    config = vocab_for(tiny_base, vectors_per_tag=2).config
    prompt = ", ".join(["lappland", "red hair"] * 20)
    with caplog.at_level(logging.WARNING, logger="altadapter.encoding"):
        ids, mask = tokenize_with_tags(tiny_base, [prompt], config, tiny_base.info.model_max_length)
    assert mask.sum() == ids.shape[1] == tiny_base.info.model_max_length
    assert ids[0, -1] == tiny_base.tokenizer.eos_token_id
    assert (
        f"prompt truncated to {tiny_base.info.model_max_length} of its 121 tokens" in caplog.text
    )  # 40 tags of 2 tokens, 39 commas


def test_prompts_without_tags_give_the_original_conditioning_bit_for_bit(tiny_base):
    adapter = vocab_for(tiny_base)
    assert torch.equal(encode_text(tiny_base, UNTAGGED, adapter), encode_text(tiny_base, UNTAGGED))
    # Mixed with prompts that have tags, in one batch: the untagged rows stay the original's exactly.
    batch = [UNTAGGED[0], TAGGED[0], UNTAGGED[1], TAGGED[1], UNTAGGED[2]]
    tuned, original = encode_text(tiny_base, batch, adapter), encode_text(tiny_base, batch)
    for row in (0, 2, 4):
        assert torch.equal(tuned[row], original[row])
    for row in (1, 3):
        assert not torch.allclose(tuned[row], original[row])
    # The negative prompt "" has no tags either: stock pipeline calls get the original negative.
    _, negative = encode_prompt_pair(tiny_base, TAGGED, adapter)
    assert torch.equal(negative, encode_text(tiny_base, [""] * len(TAGGED)))


def test_tokenizer_and_encoder_are_left_as_they_were(tiny_base):
    words = tiny_base.text_encoder.get_input_embeddings().weight.clone()
    size, fingerprint = len(tiny_base.tokenizer), tiny_base.info.fingerprint
    encode_text(tiny_base, TAGGED, vocab_for(tiny_base, vectors_per_tag=2))
    assert len(tiny_base.tokenizer) == size and "lappland" not in tiny_base.tokenizer.get_vocab()
    assert torch.equal(tiny_base.text_encoder.get_input_embeddings().weight, words)
    assert tiny_base.info.fingerprint == fingerprint


def test_scale_blends_tuned_and_original(tiny_base):
    adapter = vocab_for(tiny_base)
    original, tuned = encode_text(tiny_base, TAGGED), encode_text(tiny_base, TAGGED, adapter)
    assert torch.equal(encode_text(tiny_base, TAGGED, adapter, scale=0.0), original)
    torch.testing.assert_close(encode_text(tiny_base, TAGGED, adapter, scale=0.5), (original + tuned) / 2)


def test_gradients_reach_only_the_vectors_of_tags_in_the_batch(tiny_base):
    adapter = vocab_for(tiny_base, vectors_per_tag=2).requires_grad_(True)
    encode_text(tiny_base, ["1girl, lappland, solo"], adapter).square().mean().backward()
    moved = adapter.embeddings.grad.abs().sum(dim=1) > 0  # (T * n,)
    assert moved.tolist() == [True, True] + [False] * 6  # lappland's two vectors, nothing else
    assert all(p.grad is None for p in tiny_base.text_encoder.parameters())


def test_vectors_start_from_the_word_embeddings_of_each_tags_pieces(tiny_base):
    words = tiny_base.text_encoder.get_input_embeddings().weight
    pieces = [tiny_base.tokenizer(tag, add_special_tokens=False).input_ids for tag in ("red hair", "cat")]
    one = vocab_init_from_pieces(words, pieces, 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(one[0], words[pieces[0]].mean(dim=0))
    assert torch.equal(one[1], words[pieces[1][0]])
    two = vocab_init_from_pieces(words, pieces, 2, torch.Generator().manual_seed(0))
    assert torch.equal(two[0], words[pieces[0][0]]) and torch.equal(two[1], words[pieces[0][1]])
    # "cat" is one piece: its second vector repeats it with a little noise.
    assert torch.equal(two[2], words[pieces[1][0]]) and 0 < (two[3] - two[2]).abs().max() < 0.1


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ((), "at least one tag"),
        (("long_hair",), "not one normalised tag"),
        (("a, b",), "not one normalised tag"),
        ((" solo",), "not one normalised tag"),
        (("solo", "solo"), "distinct"),
    ],
)
def test_config_refuses_tags_a_prompt_could_not_match(tags, message):
    with pytest.raises(ValueError, match=message):
        VocabConfig(dim=8, tags=tags)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tags": "/nonexistent/tags.txt"}, "--tags /nonexistent/tags.txt: no such file"),
        ({"vectors_per_tag": 0}, "--vectors_per_tag must be at least 1"),
        ({"num_tags": 0}, "--num_tags must be at least 1"),
    ],
)
def test_bad_flags_are_refused_before_anything_loads(options, message):
    with pytest.raises(ValueError, match=message):
        VocabOptions(**options)


def test_a_tags_file_chooses_the_tags_normalised(tiny_base, tmp_path):
    tags = tmp_path / "tags.txt"
    tags.write_text("red_hair\nblue hair, lappland\n", encoding="utf-8")
    adapter = VocabKind().build(VocabOptions(tags=str(tags)), tiny_base, ["1girl, solo"], seed=0)
    assert adapter.config.tags == ("red hair", "blue hair", "lappland")


def test_without_a_tags_file_the_most_frequent_tags_are_learned(tiny_base):
    captions = ["1girl, solo, red hair, dress", "1girl, solo, blue hair", "1girl, dress"]
    adapter = VocabKind().build(VocabOptions(num_tags=3, vectors_per_tag=2), tiny_base, captions, seed=0)
    assert adapter.config.tags == ("1girl", "dress", "solo") and adapter.embeddings.shape == (6, 32)
