"""The vocab adapter: textual inversion for XLM-R, one new token of learned input vectors per domain tag.

Only the domain's tags get new vectors; the tokenizer, the encoder and every other word stay as they are.
`encoding.tokenize_with_tags` finds the adapter's tags in a prompt (whole tags, split and normalised by
`altadapter.tag_text`, wherever they stand) and gives each occurrence placeholder ids past the end of the
vocabulary: id V + t * n + k is vector k of tag t (V word-embedding rows, n = vectors_per_tag).
`encoding.encode_tokens` then feeds the words' own embeddings and the tags' vectors as `inputs_embeds`,
so a prompt without any of the tags gives exactly the original model's conditioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from altadapter.tag_text import tag_spans


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
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.vectors_per_tag < 1:
            raise ValueError(f"vectors_per_tag must be at least 1, got {self.vectors_per_tag}")
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


def learned_vectors(shape: tuple[int, int], init: torch.Tensor | None, kind: str) -> nn.Parameter:
    """Learned input vectors (rows, H) in fp32, from `init` or random at the scale of XLM-R's own word
    embeddings (initializer_range 0.02); the prompt adapter's too."""
    if init is None:
        init = torch.randn(shape) * 0.02
    elif tuple(init.shape) != shape:
        raise ValueError(f"{kind} init has shape {tuple(init.shape)}, expected {shape}")
    return nn.Parameter(init.detach().clone().float())


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
