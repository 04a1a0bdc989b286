"""Text to UNet conditioning, for the original model and through either adapter.

The original case reproduces the stock `AltDiffusionPipeline.encode_prompt` exactly: pad to the tokenizer's
`model_max_length` (512 on m9), attention mask when the config asks for it, take the projection state.

Prompt vectors go right after `<s>`: `[<s>] [P_1..P_n] [text] [</s>] [<pad>...]`. XLM-R always saw `<s>`
first in pre-training, so keeping it at the first position keeps the sequence in the form the encoder
knows, while the vectors still sit before the text they steer. Positions are counted over the widened
attention mask as XLM-R counts them for token ids, and the total length stays within its 512 usable
positions: with 100 vectors on m9 the text part is cut at 410 tokens (+ `<s>`, `</s>`) and the
conditioning keeps the original's length of 512, so tuned and original prompts batch together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from altadapter.adapters import Adapter, MLPAdapter, PromptAdapter
from altadapter.model import AltDiffusionBase

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
            if length > max_length:
                logger.warning(
                    "prompt truncated to %d of its %d tokens: %r", max_length, length, _shorten(prompt)
                )
    return tokens.input_ids, tokens.attention_mask


def xlmr_position_ids(attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Position ids as XLM-R counts them: pad_id + 1, + 2, ... over the mask's ones, pad_id elsewhere: (B, T)."""
    return (torch.cumsum(attention_mask, dim=1) * attention_mask + pad_id).long()


def encode_tokens(
    base: AltDiffusionBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_adapter: PromptAdapter | torch.nn.Module | None = None,
) -> torch.Tensor:
    """Run the text encoder (with prompt vectors spliced in after `<s>`): (B, T) ids -> (B, L, D)."""
    encoder = base.text_encoder
    input_ids = input_ids.to(encoder.device)
    attention_mask = attention_mask.to(encoder.device)
    use_mask = getattr(encoder.config, "use_attention_mask", False)
    if prompt_adapter is None:
        outputs = encoder(input_ids, attention_mask=attention_mask if use_mask else None, return_dict=True)
        return outputs[0].to(encoder.dtype)
    words = encoder.get_input_embeddings()(input_ids)  # (B, T, H)
    vectors = prompt_adapter(input_ids.shape[0]).to(words.dtype)  # (B, P, H)
    inputs_embeds = torch.cat([words[:, :1], vectors, words[:, 1:]], dim=1)  # (B, T + P, H)
    ones = attention_mask.new_ones(input_ids.shape[0], vectors.shape[1])
    mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
    # XLM-R numbers real tokens from pad_id + 1 and gives padding pad_id; it would number inputs_embeds
    # blindly 0..L, so pass the positions it would have computed for token ids.
    position_ids = xlmr_position_ids(mask, encoder.config.pad_token_id)
    outputs = encoder(
        inputs_embeds=inputs_embeds,
        attention_mask=mask if use_mask else None,
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
    length = conditioning_length(base, adapter)
    if isinstance(adapter, PromptAdapter) and scale != 0.0:
        ids, mask = tokenize(base, prompts, text_token_budget(base, adapter))
        tuned = encode_tokens(base, ids, mask, adapter)
        if scale == 1.0:
            return tuned
        ids, mask = tokenize(base, prompts, length, warn=False)
        return torch.lerp(encode_tokens(base, ids, mask), tuned, scale)
    ids, mask = tokenize(base, prompts, base.info.model_max_length)
    original = encode_tokens(base, ids, mask)
    if isinstance(adapter, MLPAdapter) and scale != 0.0:
        return apply_mlp(adapter, original, scale)
    return original


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


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
