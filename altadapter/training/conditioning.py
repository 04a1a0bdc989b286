"""Captions to conditioning inside the training loop, for any adapter kind, with the preservation penalty.

What is fixed is computed once: for a kind that acts on the encoder's output (the MLP), the encoder's
output per caption (`training.caches.build_text_cache`), so the encoder never runs in the loop; for the
others, the token ids (with the vocab adapter's placeholders), since the encoder must run every step.
A text the caches do not hold (a shuffled caption, one with dropped tags) is encoded or tokenized when a
step needs it, the same way, and not kept: the shuffles of a dataset's captions are too many to hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from altadapter.adapters.kind import AdapterKind
from altadapter.encoding import encode_original
from altadapter.model import AltDiffusionBase
from altadapter.training.caches import build_text_cache
from altadapter.training.config import PreserveConfig
from altadapter.training.preserve import preservation_loss, read_preserve_prompts


class Conditioner:
    """Conditioning for training captions, original or through an adapter, plus the preservation penalty.

    The adapter module is passed to each call rather than kept: in training it is the accelerate-prepared
    (possibly DDP-wrapped) one. `adapter` at construction gives the kind its config (token budget, tags).
    """

    def __init__(
        self,
        kind: AdapterKind,
        base: AltDiffusionBase,
        adapter: nn.Module,
        captions: Sequence[str],
        preserve: PreserveConfig,
        *,
        progress: bool,
    ) -> None:
        self.kind = kind
        self.base = base
        self.adapter_config = adapter.config
        self.positions_before_text = kind.positions_before_text(adapter.config)
        self.preserve_batch = preserve.preserve_batch_size if preserve.preserve_weight > 0 else 0
        self.preserve_prompts = (
            read_preserve_prompts(preserve.preserve_prompts) if self.preserve_batch else []
        )
        cached = [*captions, *self.preserve_prompts] if kind.acts_on_output else self.preserve_prompts
        self.originals = build_text_cache(base, cached, progress=progress)
        self.tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        unique = list(dict.fromkeys([*captions, *self.preserve_prompts]))
        if not kind.acts_on_output and unique:  # none: every caption changes per step, nothing to hold
            ids, mask = kind.tokenize(base, unique, adapter.config)
            self.tokens = {caption: (ids[i], mask[i]) for i, caption in enumerate(unique)}

    def stack_tokens(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and masks (B, T) of captions, for the adapters that enter the encoder."""
        missing = [c for c in dict.fromkeys(captions) if c not in self.tokens]
        fresh = {}
        if missing:
            ids, mask = self.kind.tokenize(self.base, missing, self.adapter_config, warn=False)
            fresh = {caption: (ids[i], mask[i]) for i, caption in enumerate(missing)}
        rows = [self.tokens[c] if c in self.tokens else fresh[c] for c in captions]
        return torch.stack([ids for ids, _ in rows]), torch.stack([mask for _, mask in rows])

    def stack_originals(self, captions: Sequence[str]) -> torch.Tensor:
        """Original conditioning (B, L, D) of captions, on the base's device."""
        missing = [c for c in dict.fromkeys(captions) if c not in self.originals]
        fresh = build_text_cache(self.base, missing, progress=False) if missing else {}
        rows = [self.originals[c] if c in self.originals else fresh[c] for c in captions]
        return torch.stack(rows).to(self.base.device)

    def original(self, captions: Sequence[str]) -> torch.Tensor:
        """Conditioning (B, L, D) of captions as the original model has it."""
        if self.kind.acts_on_output:
            return self.stack_originals(captions)
        return encode_original(self.base, captions, warn=False)

    def tuned_with_penalty(
        self, adapter: nn.Module, captions: Sequence[str], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning of captions through `adapter` and, given a generator, the preservation penalty.

        Captions and general prompts go through the adapter in one call: a DDP-wrapped adapter must run
        forward once per backward.
        """
        chosen: list[str] = []
        if generator is not None and self.preserve_batch:
            order = torch.randperm(len(self.preserve_prompts), generator=generator)[: self.preserve_batch]
            chosen = [self.preserve_prompts[i] for i in order.tolist()]
        batch = [*captions, *chosen]
        if self.kind.acts_on_output:
            tuned = self.kind.transform(adapter, self.stack_originals(batch))
        else:
            tuned = self.kind.encode(self.base, *self.stack_tokens(batch), adapter)
        if not chosen:
            return tuned, None
        penalty = preservation_loss(
            self.stack_originals(chosen), tuned[len(captions) :], self.positions_before_text
        )
        return tuned[: len(captions)], penalty
