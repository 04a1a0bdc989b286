"""Prompts to UNet conditioning, original or through an adapter of any kind, at any strength."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from altadapter.adapters.registry import kind_of
from altadapter.encoding import encode_original
from altadapter.model import AltDiffusionBase


def conditioning_length(base: AltDiffusionBase, adapter: nn.Module | None = None) -> int:
    """Positions of the conditioning: the tokenizer's length, or what the adapter makes of it."""
    if adapter is None:
        return base.info.model_max_length
    return kind_of(adapter).conditioning_length(base, adapter.config)


def is_original(adapter: nn.Module | None, scale: float) -> bool:
    """Whether `adapter` at `scale` conditions exactly as the original model: no adapter, or scale 0."""
    return adapter is None or scale == 0.0


def encode_text(
    base: AltDiffusionBase, prompts: Sequence[str], adapter: nn.Module | None = None, *, scale: float = 1.0
) -> torch.Tensor:
    """The UNet conditioning (B, L, D) for `prompts`: original, or tuned by `adapter` at strength `scale`.

    scale 0 is the original model and 1 the tuned one; values between blend the two conditionings.
    """
    if is_original(adapter, scale):
        return encode_original(base, prompts)
    kind = kind_of(adapter)
    ids, mask = kind.tokenize(base, prompts, adapter.config)
    tuned = kind.encode(base, ids, mask, adapter)
    if scale == 1.0:
        return tuned
    original = encode_original(base, prompts, tuned.shape[1], warn=False)
    return torch.lerp(original.float(), tuned.float(), scale).to(tuned.dtype)


def encode_prompt_pair(
    base: AltDiffusionBase,
    prompts: Sequence[str],
    adapter: nn.Module | None = None,
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
