"""Captions to conditioning inside the training loop: the one place where the two adapter kinds differ.

MLP: the text encoder sits before the adapter and is frozen, so its output per caption is computed once
(`training.caches.build_text_cache`) and the encoder never runs in the loop. Prompt: the vectors enter the
encoder, so it runs forward and backward every step; only the tokenization is computed once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from altadapter.adapters import (
    Adapter,
    AdapterKind,
    MLPAdapter,
    MLPConfig,
    PromptAdapter,
    PromptConfig,
    prompt_init_from_text,
)
from altadapter.data.prompts import TagVocabulary
from altadapter.encoding import apply_mlp, encode_tokens, text_token_budget, tokenize
from altadapter.model import AltDiffusionBase
from altadapter.training.caches import build_text_cache
from altadapter.training.preserve import preservation_loss, read_preserve_prompts

INIT_TAGS = 32  # most frequent dataset tags used as the default --init_text


def build_training_adapter(
    kind: AdapterKind, args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]
) -> Adapter:
    """A fresh fp32 adapter sized for `base`; prompt vectors start from text unless --random_init."""
    if kind == "mlp":
        return MLPAdapter(MLPConfig(dim=base.info.project_dim, num_layers=args.num_layers))
    limit = base.info.max_text_positions - 2
    if args.num_prompts > limit:
        raise ValueError(
            f"--num_prompts {args.num_prompts}: this base's text encoder places {base.info.max_text_positions} "
            f"tokens and needs 2 for <s> and </s>; use at most {limit}"
        )
    config = PromptConfig(dim=base.info.hidden_size, num_prompts=args.num_prompts)
    if args.random_init:
        return PromptAdapter(config)  # random, at the scale of XLM-R word embeddings
    text = args.init_text or ", ".join(
        tag for tag, _ in TagVocabulary.from_captions(captions).ranked()[:INIT_TAGS]
    )
    ids = base.tokenizer(text, add_special_tokens=False).input_ids
    init = prompt_init_from_text(
        base.text_encoder.get_input_embeddings().weight,
        ids,
        args.num_prompts,
        torch.Generator().manual_seed(args.seed),
    )
    return PromptAdapter(config, init)


class Conditioner:
    """Conditioning for training captions, original or through an adapter, plus the preservation penalty.

    The adapter module is passed to each call rather than kept: in training it is the accelerate-prepared
    (possibly DDP-wrapped) one. `adapter` at construction only sizes the token budget of prompt vectors.
    """

    def __init__(
        self,
        kind: AdapterKind,
        base: AltDiffusionBase,
        adapter: Adapter,
        captions: Sequence[str],
        args: argparse.Namespace,
        *,
        progress: bool,
    ) -> None:
        self.kind = kind
        self.base = base
        self.num_prompts = adapter.config.num_prompts if kind == "prompt" else 0
        self.preserve_batch = args.preserve_batch_size if args.preserve_weight > 0 else 0
        self.preserve_prompts = read_preserve_prompts(args.preserve_prompts) if self.preserve_batch else []
        if kind == "mlp":
            self.originals = build_text_cache(base, [*captions, *self.preserve_prompts], progress=progress)
        else:
            self.originals = build_text_cache(base, self.preserve_prompts, progress=progress)
        self.tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if kind == "prompt":
            unique = list(dict.fromkeys([*captions, *self.preserve_prompts]))
            ids, mask = tokenize(base, unique, text_token_budget(base, adapter))
            self.tokens = {caption: (ids[i], mask[i]) for i, caption in enumerate(unique)}

    def stack_tokens(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-computed token ids and masks (B, T) of captions, for the prompt adapter."""
        ids = torch.stack([self.tokens[c][0] for c in captions])
        mask = torch.stack([self.tokens[c][1] for c in captions])
        return ids, mask

    def stack_originals(self, captions: Sequence[str]) -> torch.Tensor:
        """Cached original conditioning (B, L, D) of captions, on the base's device."""
        return torch.stack([self.originals[c] for c in captions]).to(self.base.device)

    def original(self, captions: Sequence[str]) -> torch.Tensor:
        """Conditioning (B, L, D) of captions as the original model has it."""
        if self.kind == "mlp":
            return self.stack_originals(captions)
        ids, mask = tokenize(self.base, captions, self.base.info.model_max_length, warn=False)
        return encode_tokens(self.base, ids, mask)

    def tuned(
        self, adapter: torch.nn.Module, captions: Sequence[str], generator: torch.Generator | None = None
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
        if self.kind == "mlp":
            tuned = apply_mlp(adapter, self.stack_originals(batch))
        else:
            ids, mask = self.stack_tokens(batch)
            tuned = encode_tokens(self.base, ids, mask, adapter)
        if not chosen:
            return tuned, None
        penalty = preservation_loss(self.stack_originals(chosen), tuned[len(captions) :], self.num_prompts)
        return tuned[: len(captions)], penalty
