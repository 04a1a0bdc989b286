"""Text to UNet conditioning, for the original model and through any adapter kind.

The original case reproduces the stock `AltDiffusionPipeline.encode_prompt` exactly: pad to the tokenizer's
`model_max_length` (512 on m9), attention mask when the config asks for it, take the projection state.

Prompt vectors go right after `<s>`: `[<s>] [P_1..P_n] [text] [</s>] [<pad>...]`. XLM-R always saw `<s>`
first in pre-training, so keeping it at the first position keeps the sequence in the form the encoder
knows, while the vectors still sit before the text they steer. Positions are counted over the widened
attention mask as XLM-R counts them for token ids, and the total length stays within its 512 usable
positions: with 100 vectors on m9 the text part is cut at 410 tokens (+ `<s>`, `</s>`) and the
conditioning keeps the original's length of 512, so tuned and original prompts batch together.

Vocab adapter: each of its tags in a prompt becomes placeholder ids past the vocabulary (see
`vocab_adapter`); everything else is tokenized as the tokenizer does it, so a prompt without its tags
is encoded exactly as the original. LoRA: the same token ids, through the encoder with the LoRA active.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from altadapter.adapters import Adapter, MLPAdapter, PromptAdapter, VocabAdapter
from altadapter.model import AltDiffusionBase
from altadapter.tag_text import tag_spans
from altadapter.vocab_adapter import VocabConfig

logger = logging.getLogger(__name__)


def conditioning_length(base: AltDiffusionBase, adapter: Adapter | None = None) -> int:
    """Tokens in the conditioning: the tokenizer's length, widened by prompt vectors up to XLM-R's limit."""
    length = base.info.model_max_length
    if isinstance(adapter, PromptAdapter):
        length = min(length + adapter.config.num_prompts, base.info.max_text_positions)
    return length


def text_token_budget(base: AltDiffusionBase, adapter: Adapter | None = None) -> int:
    """Token ids (with `<s>` and `</s>`) that fit beside the adapter's prompt vectors."""
    budget = conditioning_length(base, adapter)
    if isinstance(adapter, PromptAdapter):
        budget -= adapter.config.num_prompts
    if budget < 2:
        raise ValueError(
            f"{adapter.config.num_prompts} prompt vectors leave no room for text in the encoder's "
            f"{base.info.max_text_positions} positions; use at most {base.info.max_text_positions - 2}"
        )
    return budget


def tokenize(
    base: AltDiffusionBase, prompts: Sequence[str], max_length: int, *, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, (B, max_length) each, padded and truncated as the stock pipeline does."""
    prompts = list(prompts)
    tokens = base.tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    if warn:
        # verbose=False: this call measures length on purpose; the warning below names the prompt instead.
        lengths = [len(ids) for ids in base.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
        for prompt, length in zip(prompts, lengths, strict=True):
            _warn_if_truncated(prompt, length, max_length)
    return tokens.input_ids, tokens.attention_mask


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
    n = config.vectors_per_tag
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
                _warn_if_truncated(prompt, len(tokens), max_length)
            continue
        content = _with_placeholders(
            tokens, full["offset_mapping"][row], full["special_tokens_mask"][row], matches, first, n
        )
        if warn:
            _warn_if_truncated(prompt, len(content) + 2, max_length)
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
    n: int,
) -> list[int]:
    """One prompt's tokens without `<s>` and `</s>`, those overlapping a matched (start, end, tag) stretch
    replaced by the tag's n placeholder ids, once per match."""
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


def adapter_tokens(
    base: AltDiffusionBase, prompts: Sequence[str], adapter: Adapter, *, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids and mask (B, T) that `encode_tokens` takes for a prompt, vocab or LoRA adapter."""
    if isinstance(adapter, PromptAdapter):
        return tokenize(base, prompts, text_token_budget(base, adapter), warn=warn)
    if isinstance(adapter, VocabAdapter):
        return tokenize_with_tags(base, prompts, adapter.config, base.info.model_max_length, warn=warn)
    return tokenize(base, prompts, base.info.model_max_length, warn=warn)


def prompt_attention_mask(attention_mask: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """The text's mask (B, T) widened by the prompt vectors after `<s>`: (B, T + P)."""
    ones = attention_mask.new_ones(attention_mask.shape[0], num_prompts)
    return torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)


def xlmr_position_ids(attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Position ids as XLM-R counts them: pad_id + 1, + 2, ... over the mask's ones, pad_id elsewhere: (B, T)."""
    return (torch.cumsum(attention_mask, dim=1) * attention_mask + pad_id).long()


def encode_tokens(
    base: AltDiffusionBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter: torch.nn.Module | None = None,
    *,
    kind: str | None = None,
) -> torch.Tensor:
    """Run the text encoder, through a prompt, vocab or LoRA adapter if given: (B, T) ids -> (B, L, D).

    `kind` names the adapter's kind when `adapter` is wrapped (by DDP in training) and cannot say itself.
    The adapter is called exactly once, as a DDP-wrapped module must be per backward pass.
    """
    encoder = base.text_encoder
    input_ids = input_ids.to(encoder.device)
    attention_mask = attention_mask.to(encoder.device)
    use_mask = getattr(encoder.config, "use_attention_mask", False)
    kind = kind or getattr(adapter, "kind", None)
    if adapter is None:
        outputs = encoder(input_ids, attention_mask=attention_mask if use_mask else None, return_dict=True)
        return outputs[0].to(encoder.dtype)
    if kind == "lora":
        return adapter(encoder, input_ids, attention_mask if use_mask else None).to(encoder.dtype)
    embed = encoder.get_input_embeddings()
    if kind == "prompt":
        words = embed(input_ids)  # (B, T, H)
        vectors = adapter(input_ids.shape[0]).to(words.dtype)  # (B, P, H)
        inputs_embeds = torch.cat([words[:, :1], vectors, words[:, 1:]], dim=1)  # (B, T + P, H)
        attention_mask = prompt_attention_mask(attention_mask, vectors.shape[1])
    elif kind == "vocab":
        slots = input_ids - embed.num_embeddings  # (B, T): a tag vector's row where >= 0, a word below
        words = embed(input_ids.clamp(max=embed.num_embeddings - 1))  # (B, T, H)
        vectors = adapter(slots.clamp(min=0)).to(words.dtype)  # (B, T, H)
        inputs_embeds = torch.where((slots >= 0).unsqueeze(-1), vectors, words)
    else:
        raise ValueError(f"encode_tokens takes a prompt, vocab or lora adapter, not {kind!r}")
    # XLM-R numbers real tokens from pad_id + 1 and gives padding pad_id; it would number inputs_embeds
    # blindly 0..L, so pass the positions it would have computed for token ids.
    position_ids = xlmr_position_ids(attention_mask, encoder.config.pad_token_id)
    outputs = encoder(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask if use_mask else None,
        position_ids=position_ids,
        return_dict=True,
    )
    return outputs[0].to(encoder.dtype)


def apply_mlp(
    adapter: MLPAdapter | torch.nn.Module, conditioning: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """Blend in the MLP adapter: conditioning + scale * f(conditioning), in the conditioning's dtype."""
    # next(parameters()) rather than .layers: the adapter may be wrapped by DDP during training.
    inputs = conditioning.to(next(adapter.parameters()).dtype)
    tuned = adapter(inputs)
    if scale != 1.0:
        tuned = torch.lerp(inputs, tuned, scale)
    return tuned.to(conditioning.dtype)


def encode_text(
    base: AltDiffusionBase, prompts: Sequence[str], adapter: Adapter | None = None, *, scale: float = 1.0
) -> torch.Tensor:
    """The UNet conditioning (B, L, D) for `prompts`: original, or tuned by `adapter` at strength `scale`.

    scale 0 is the original model and 1 the tuned one; values between blend the two conditionings.
    """
    if adapter is None or scale == 0.0 or isinstance(adapter, MLPAdapter):
        ids, mask = tokenize(base, prompts, base.info.model_max_length)
        original = encode_tokens(base, ids, mask)
        return apply_mlp(adapter, original, scale) if adapter is not None and scale != 0.0 else original
    ids, mask = adapter_tokens(base, prompts, adapter)
    tuned = encode_tokens(base, ids, mask, adapter)
    if scale == 1.0:
        return tuned
    ids, mask = tokenize(base, prompts, conditioning_length(base, adapter), warn=False)
    return torch.lerp(encode_tokens(base, ids, mask), tuned, scale)


def encode_prompt_pair(
    base: AltDiffusionBase,
    prompts: Sequence[str],
    adapter: Adapter | None = None,
    *,
    scale: float = 1.0,
    negative_prompt: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_embeds` and `negative_prompt_embeds` for a stock diffusers pipeline call.

    The negative prompt goes through the adapter too: the adapter is part of the tuned text encoder.
    """
    positive = encode_text(base, prompts, adapter, scale=scale)
    negative = encode_text(base, [negative_prompt] * len(prompts), adapter, scale=scale)
    return positive, negative


def _warn_if_truncated(prompt: str, length: int, max_length: int) -> None:
    if length > max_length:
        logger.warning("prompt truncated to %d of its %d tokens: %r", max_length, length, _shorten(prompt))


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
