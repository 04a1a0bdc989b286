"""Text to UNet conditioning as the original model computes it, and the encoder calls every kind builds on.

`encode_tokens` reproduces the stock `AltDiffusionPipeline.encode_prompt` exactly: ids padded to the
tokenizer's `model_max_length` (512 on m9), the attention mask only when the encoder's config asks for it,
the projection state as output. Adapter kinds change what goes in (`encode_embeddings`) or what comes out;
`altadapter.adapters.conditioning` puts them together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from altadapter.model import AltDiffusionBase

logger = logging.getLogger(__name__)


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
            warn_if_truncated(prompt, length, max_length)
    return tokens.input_ids, tokens.attention_mask


def warn_if_truncated(prompt: str, length: int, max_length: int) -> None:
    """Log that a prompt of `length` tokens loses its end at `max_length`."""
    if length > max_length:
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        logger.warning("prompt truncated to %d of its %d tokens: %r", max_length, length, shown)


def xlmr_position_ids(attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Position ids as XLM-R counts them: pad_id + 1, + 2, ... over the mask's ones, pad_id elsewhere: (B, T)."""
    return (torch.cumsum(attention_mask, dim=1) * attention_mask + pad_id).long()


def encoder_mask(base: AltDiffusionBase, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The mask the stock pipeline gives the encoder: only where its config sets `use_attention_mask`."""
    use_mask = getattr(base.text_encoder.config, "use_attention_mask", False)
    return attention_mask.to(base.text_encoder.device) if use_mask else None


def encode_tokens(
    base: AltDiffusionBase, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The original model's conditioning of token ids: (B, T) -> (B, T, D), in the encoder's dtype."""
    encoder = base.text_encoder
    outputs = encoder(
        input_ids.to(encoder.device), attention_mask=encoder_mask(base, attention_mask), return_dict=True
    )
    return outputs[0].to(encoder.dtype)


def encode_embeddings(
    base: AltDiffusionBase, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The encoder's conditioning of input vectors: (B, T, H) -> (B, T, D), positions as for token ids.

    XLM-R numbers real tokens from pad_id + 1 and gives padding pad_id; given inputs_embeds it would
    number them blindly 0..T, so pass the positions it computes for token ids.
    """
    encoder = base.text_encoder
    attention_mask = attention_mask.to(encoder.device)
    outputs = encoder(
        inputs_embeds=inputs_embeds,
        attention_mask=encoder_mask(base, attention_mask),
        position_ids=xlmr_position_ids(attention_mask, encoder.config.pad_token_id),
        return_dict=True,
    )
    return outputs[0].to(encoder.dtype)


def encode_original(
    base: AltDiffusionBase, prompts: Sequence[str], length: int | None = None, *, warn: bool = True
) -> torch.Tensor:
    """The original model's conditioning of prompts (B, L, D), L the tokenizer's length unless given."""
    ids, mask = tokenize(base, prompts, length or base.info.model_max_length, warn=warn)
    return encode_tokens(base, ids, mask)
