"""The vocab adapter: textual inversion for XLM-R, one new token of learned input vectors per domain tag.

Only the domain's tags get new vectors; the tokenizer, the encoder and every other word stay as they are.
`tokenize_with_tags` finds the adapter's tags in a prompt (whole tags, split and normalised as captions
are) and gives each occurrence placeholder ids past the vocabulary: id V + t * n + k is vector k of tag t
(V word-embedding rows, n = vectors_per_tag). A prompt without any of the tags is encoded exactly as the
original.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from altadapter.adapters.kind import AdapterKind, check_positive, learned_vectors
from altadapter.data.prompts import TagVocabulary
from altadapter.data.tag_text import tag_spans
from altadapter.data.tags import read_tag_file
from altadapter.encoding import encode_embeddings, tokenize, warn_if_truncated
from altadapter.model import AltDiffusionBase, BaseInfo


@dataclass(frozen=True)
class VocabConfig:
    """`vectors_per_tag` learned vectors of width `dim` (the word-embedding width) for each of `tags`.

    Tags are stored as the normaliser writes them with underscores as spaces ("long hair", not
    "long_hair"); a prompt's tags are normalised the same way before they are matched.
    """

    dim: int
    tags: tuple[str, ...]
    vectors_per_tag: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))  # an adapter file's JSON gives a list
        check_positive(self, "dim", "vectors_per_tag")
        if not self.tags:
            raise ValueError("a vocab adapter needs at least one tag")
        for tag in self.tags:
            if not isinstance(tag, str) or tag_spans(tag, underscores_to_spaces=True) != [(0, len(tag), tag)]:
                raise ValueError(
                    f"tag {tag!r} is not one normalised tag (no separators, single spaces, no underscores)"
                )
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("tags must be distinct")

    @property
    def num_vectors(self) -> int:
        return len(self.tags) * self.vectors_per_tag


class VocabAdapter(nn.Module):
    """Learned input vectors of the domain's tags, (T * n, H): rows t*n .. t*n + n - 1 belong to tags[t]."""

    kind: ClassVar[str] = "vocab"

    def __init__(self, config: VocabConfig, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = learned_vectors((config.num_vectors, config.dim), init, "vocab")

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """The vectors at row indices `slots`: (B, T) -> (B, T, H)."""
        return self.embeddings[slots]


@dataclass(frozen=True)
class VocabOptions:
    """The vocab adapter's training flags."""

    num_tags: int = 32
    tags: str | None = None
    vectors_per_tag: int = 1
    init_text: str | None = None

    def __post_init__(self) -> None:
        check_positive(self, "num_tags", "vectors_per_tag", prefix="--")
        if self.tags is not None and not Path(self.tags).is_file():
            raise ValueError(f"--tags {self.tags}: no such file")


def vocab_init_from_pieces(
    word_embeddings: torch.Tensor,
    pieces: Sequence[Sequence[int]],
    vectors_per_tag: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each tag's vectors from the word embeddings of its pieces: (len(pieces) * n, H).

    The pieces are cut into n consecutive runs and vector k is the mean of run k, so with one vector a
    tag starts as the average of its pieces. A tag with fewer pieces than vectors repeats its pieces,
    with small noise to break the tie between equal rows.
    """
    rows = []
    for tag_pieces in pieces:
        if not tag_pieces:
            raise ValueError("a tag (or --init_text) tokenized to no pieces")
        table = word_embeddings.detach()[torch.tensor(list(tag_pieces))].float().cpu()  # (p, H)
        for k, run in enumerate(torch.arange(len(tag_pieces)).tensor_split(vectors_per_tag)):
            if len(run):
                rows.append(table[run].mean(dim=0))
            else:
                noise = torch.randn(table.shape[1], generator=generator) * table.std() * 0.1
                rows.append(table[k % len(tag_pieces)] + noise)
    return torch.stack(rows)


def tokenize_with_tags(
    base: AltDiffusionBase, prompts: Sequence[str], config: VocabConfig, max_length: int, *, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `tokenize`, with every whole tag of `config` replaced by its placeholder ids: (B, max_length) each.

    A prompt's tags are split and normalised as the dataset's captions are (`,` or `，`, whitespace,
    underscores as spaces); the tokens overlapping a matching tag's stretch between separators become
    `vectors_per_tag` placeholders, V + t * n .. V + t * n + n - 1. Rows without a tag are `tokenize`'s.
    """
    prompts = list(prompts)
    ids, mask = tokenize(base, prompts, max_length, warn=False)
    index = {tag: t for t, tag in enumerate(config.tags)}
    first = base.text_encoder.get_input_embeddings().num_embeddings  # placeholders start past the words
    full = base.tokenizer(
        prompts, truncation=False, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False
    )
    for row, prompt in enumerate(prompts):
        tokens = full["input_ids"][row]
        matches = [
            (start, end, index[tag])
            for start, end, tag in tag_spans(prompt, underscores_to_spaces=True)
            if tag in index
        ]
        if not matches:
            if warn:
                warn_if_truncated(prompt, len(tokens), max_length)
            continue
        content = _with_placeholders(
            tokens, full["offset_mapping"][row], full["special_tokens_mask"][row], matches, first, config
        )
        if warn:
            warn_if_truncated(prompt, len(content) + 2, max_length)
        sequence = [tokens[0], *content[: max_length - 2], tokens[-1]]  # <s> ... </s>, as truncation keeps
        ids[row] = base.tokenizer.pad_token_id
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row] = 0
        mask[row, : len(sequence)] = 1
    return ids, mask


def _with_placeholders(
    tokens: list[int],
    offsets: list[tuple[int, int]],
    specials: list[int],
    matches: list[tuple[int, int, int]],
    first: int,
    config: VocabConfig,
) -> list[int]:
    """One prompt's tokens without `<s>` and `</s>`, those overlapping a matched (start, end, tag) stretch
    replaced by the tag's placeholder ids, once per match."""
    n = config.vectors_per_tag
    content: list[int] = []
    placed: set[int] = set()
    for token, (begin, finish), special in zip(tokens, offsets, specials, strict=True):
        if special:
            continue
        # The match whose stretch this token overlaps (a zero-width token counts at its position).
        hit = next(
            (m for m, (s, e, _) in enumerate(matches) if begin < e and max(finish, begin + 1) > s), None
        )
        if hit is None:
            content.append(token)
        elif hit not in placed:
            placed.add(hit)
            content.extend(range(first + matches[hit][2] * n, first + matches[hit][2] * n + n))
    return content


class VocabKind(AdapterKind):
    """A new token per domain tag: prompts without the tags keep the original conditioning, bit for bit."""

    name = "vocab"
    title = "Vocab"
    summary = "a new token per domain tag"
    config_class = VocabConfig
    module_class = VocabAdapter
    options_class = VocabOptions
    train_command = "train_adapter.py --kind vocab"
    render_command = "render_adapter.py"
    default_run_name = "altm9-vocab"
    default_learning_rate = 1e-3
    vector_noun = "tag vector"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("vocab adapter")
        group.add_argument(
            "--num_tags",
            type=int,
            default=VocabOptions.num_tags,
            help="learn a new token for each of the dataset's N most frequent tags (32 x 1024 = 32,768 "
            "parameters on m9)",
        )
        group.add_argument(
            "--tags",
            default=None,
            help="file of the tags to learn instead (one per line or comma-separated, UTF-8)",
        )
        group.add_argument(
            "--vectors_per_tag",
            type=int,
            default=VocabOptions.vectors_per_tag,
            help="learned input vectors that stand for each tag",
        )
        group.add_argument(
            "--init_text",
            default=None,
            help="initialise every tag's vectors from this text's word embeddings (default: each tag's pieces)",
        )

    def build(
        self, options: VocabOptions, base: AltDiffusionBase, captions: Sequence[str], seed: int
    ) -> VocabAdapter:
        """A vector run per tag (--tags FILE, or the --num_tags most frequent), from its pieces or --init_text."""
        if options.tags:
            tags = read_tag_file(options.tags, underscores_to_spaces=True)
            if not tags:
                raise ValueError(
                    f"--tags {options.tags} holds no tags; write one tag per line or comma-separated"
                )
        else:
            ranked = TagVocabulary.from_captions(captions, underscores_to_spaces=True).ranked()
            tags = [tag for tag, _ in ranked[: options.num_tags]]
        config = VocabConfig(
            dim=base.info.hidden_size, tags=tuple(tags), vectors_per_tag=options.vectors_per_tag
        )
        texts = [options.init_text] * len(tags) if options.init_text else tags
        init = vocab_init_from_pieces(
            base.text_encoder.get_input_embeddings().weight,
            [base.tokenizer(text, add_special_tokens=False).input_ids for text in texts],
            options.vectors_per_tag,
            torch.Generator().manual_seed(seed),
        )
        return VocabAdapter(config, init)

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.hidden_size:
            return f"this vocab adapter is {config.get('dim')} wide but the base's hidden_size is {base.hidden_size}"
        return None

    def tokenize(
        self, base: AltDiffusionBase, prompts: Sequence[str], config: VocabConfig, *, warn: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_with_tags(base, prompts, config, base.info.model_max_length, warn=warn)

    def encode(
        self, base: AltDiffusionBase, ids: torch.Tensor, mask: torch.Tensor, module: nn.Module
    ) -> torch.Tensor:
        embed = base.text_encoder.get_input_embeddings()
        ids = ids.to(base.text_encoder.device)
        slots = ids - embed.num_embeddings  # (B, T): a tag vector's row where >= 0, a word below
        words = embed(ids.clamp(max=embed.num_embeddings - 1))  # (B, T, H)
        vectors = module(slots.clamp(min=0)).to(words.dtype)  # (B, T, H)
        return encode_embeddings(base, torch.where((slots >= 0).unsqueeze(-1), vectors, words), mask)

    def learned_vectors(self, module: nn.Module) -> torch.Tensor:
        return module.embeddings

    def vector_labels(self, config: dict) -> list[str]:
        """The tag each vector stands for, numbered when a tag has several."""
        per_tag = config["vectors_per_tag"]
        return [tag if per_tag == 1 else f"{tag} [{k}]" for tag in config["tags"] for k in range(per_tag)]
