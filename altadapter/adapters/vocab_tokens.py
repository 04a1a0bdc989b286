"""How a vocab adapter reads a prompt: each whole tag as its own added token, as textual inversion does.

A prompt's tags are found as the dataset's captions are split (`,` or `，`, whitespace, underscores as
spaces), written as their tokens (`tag_tokens`) and tokenized by a copy of the tokenizer that knows them,
exactly as diffusers' `load_textual_inversion` + `encode_prompt` tokenize the prompt a user types with the
tokens. So the exported adapter (`VocabKind.export`) gives the same conditioning in a stock pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from copy import deepcopy
from typing import TYPE_CHECKING

import torch
from transformers import XLMRobertaTokenizer

from altadapter.data.tag_text import tag_spans
from altadapter.encoding import tokenize, warn_if_truncated
from altadapter.model import AltDiffusionBase

if TYPE_CHECKING:
    from altadapter.adapters.vocab import VocabConfig


def tag_tokens(tokenizer: XLMRobertaTokenizer, config: VocabConfig) -> list[list[str]]:
    """The added tokens that stand for each tag, as diffusers' textual inversion names them: `<long_hair>`
    for one vector, then `<long_hair>_1` ... for more. A form the tokenizer knows already (diffusers refuses
    those) gets a `~` until it is new."""
    vocabulary = tokenizer.get_vocab()
    tokens: list[list[str]] = []
    for tag in config.tags:
        token = "<" + tag.replace(" ", "_") + ">"
        while token in vocabulary or any(token == other[0] for other in tokens):
            token = token[:-1] + "~>"
        tokens.append([token, *(f"{token}_{k}" for k in range(1, config.vectors_per_tag))])
    return tokens


@functools.lru_cache(maxsize=8)
def _tag_tokenizer(
    tokenizer: XLMRobertaTokenizer, config: VocabConfig
) -> tuple[XLMRobertaTokenizer, dict[int, int], list[list[str]]]:
    """A copy of `tokenizer` with every tag token added, each added id -> its vector's row, and the tokens."""
    copy = deepcopy(tokenizer)
    names = tag_tokens(tokenizer, config)
    flat = [name for tag in names for name in tag]
    copy.add_tokens(flat)
    return copy, {copy.convert_tokens_to_ids(name): row for row, name in enumerate(flat)}, names


def with_tag_tokens(prompt: str, config: VocabConfig, tokens: Sequence[Sequence[str]]) -> str:
    """The prompt with every whole tag of `config` written as its tokens, space-separated, as a user of
    diffusers' textual inversion would type it; separators and the whitespace around tags stay."""
    index = {tag: t for t, tag in enumerate(config.tags)}
    pieces, last = [], 0
    for start, end, tag in tag_spans(prompt, underscores_to_spaces=True):
        if tag in index:
            stretch = prompt[start:end]
            core_start = start + len(stretch) - len(stretch.lstrip())
            core_end = end - (len(stretch) - len(stretch.rstrip()))
            pieces += [prompt[last:core_start], " ".join(tokens[index[tag]])]
            last = core_end
    return "".join([*pieces, prompt[last:]])


def tokenize_with_tags(
    base: AltDiffusionBase, prompts: Sequence[str], config: VocabConfig, max_length: int, *, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `tokenize`, with every whole tag of `config` read as its placeholder ids: (B, max_length) each.

    Token k of tag t becomes id V + t * n + k (V word-embedding rows). Rows without a tag are `tokenize`'s,
    so they encode as the original model does.
    """
    prompts = list(prompts)
    ids, mask = tokenize(base, prompts, max_length, warn=False)
    tagger, rows, tokens = _tag_tokenizer(base.tokenizer, config)
    first = base.text_encoder.get_input_embeddings().num_embeddings  # placeholders start past the words
    for row, prompt in enumerate(prompts):
        text = with_tag_tokens(prompt, config, tokens)
        if text == prompt:
            if warn:
                warn_if_truncated(prompt, len(base.tokenizer(prompt, verbose=False).input_ids), max_length)
            continue
        if warn:
            warn_if_truncated(prompt, len(tagger(text, verbose=False).input_ids), max_length)
        tagged = tagger(
            text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        ids[row] = torch.tensor([first + rows[i] if i in rows else i for i in tagged.input_ids[0].tolist()])
        mask[row] = tagged.attention_mask[0]
    return ids, mask
