"""Captions to conditioning inside the training loop: the one place where the adapter kinds differ.

MLP: the text encoder sits before the adapter and is frozen, so its output per caption is computed once
(`training.caches.build_text_cache`) and the encoder never runs in the loop. Prompt, vocab and LoRA: the
adapter acts on the encoder's input or inside it, so the encoder runs forward and backward every step;
only the tokenization (with the vocab adapter's placeholders) is computed once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from altadapter.adapters import (
    Adapter,
    AdapterKind,
    LoRAAdapter,
    LoRAConfig,
    MLPAdapter,
    MLPConfig,
    PromptAdapter,
    PromptConfig,
    VocabAdapter,
    VocabConfig,
    prompt_init_from_text,
)
from altadapter.data.prompts import TagVocabulary
from altadapter.data.tags import read_tag_file
from altadapter.encoding import adapter_tokens, apply_mlp, encode_tokens, tokenize
from altadapter.model import AltDiffusionBase
from altadapter.training.caches import build_text_cache
from altadapter.training.preserve import preservation_loss, read_preserve_prompts
from altadapter.vocab_adapter import vocab_init_from_pieces

INIT_TAGS = 32  # most frequent dataset tags used as the default --init_text


def build_training_adapter(
    kind: AdapterKind, args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]
) -> Adapter:
    """A fresh fp32 adapter of `kind` sized for `base`, from the kind's own flags."""
    builders = {"mlp": _mlp, "prompt": _prompt, "vocab": _vocab, "lora": _lora}
    return builders[kind](args, base, captions)


def _mlp(args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]) -> MLPAdapter:
    return MLPAdapter(MLPConfig(dim=base.info.project_dim, num_layers=args.num_layers))


def _prompt(args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]) -> PromptAdapter:
    """Prompt vectors from --init_text (default: the dataset's most frequent tags) unless --random_init."""
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


def _vocab(args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]) -> VocabAdapter:
    """A vector run per tag (--tags FILE, or the --num_tags most frequent), from its pieces or --init_text."""
    if args.tags:
        tags = read_tag_file(args.tags, underscores_to_spaces=True)
        if not tags:
            raise ValueError(f"--tags {args.tags} holds no tags; write one tag per line or comma-separated")
    else:
        ranked = TagVocabulary.from_captions(captions, underscores_to_spaces=True).ranked()
        tags = [tag for tag, _ in ranked[: args.num_tags]]
    config = VocabConfig(dim=base.info.hidden_size, tags=tuple(tags), vectors_per_tag=args.vectors_per_tag)
    texts = [args.init_text] * len(tags) if args.init_text else tags
    init = vocab_init_from_pieces(
        base.text_encoder.get_input_embeddings().weight,
        [base.tokenizer(text, add_special_tokens=False).input_ids for text in texts],
        args.vectors_per_tag,
        torch.Generator().manual_seed(args.seed),
    )
    return VocabAdapter(config, init)


def _lora(args: argparse.Namespace, base: AltDiffusionBase, captions: Sequence[str]) -> LoRAAdapter:
    """LoRA on --lora_targets of every encoder layer; B starts at zero, so training starts at the original."""
    config = LoRAConfig(
        dim=base.info.hidden_size,
        num_layers=base.text_encoder.config.num_hidden_layers,
        rank=args.rank,
        alpha=args.lora_alpha if args.lora_alpha is not None else float(args.rank),
        targets=tuple(args.lora_targets),
    )
    return LoRAAdapter(config)


class Conditioner:
    """Conditioning for training captions, original or through an adapter, plus the preservation penalty.

    The adapter module is passed to each call rather than kept: in training it is the accelerate-prepared
    (possibly DDP-wrapped) one. `adapter` at construction only sizes the token budget of prompt vectors
    and gives the vocab adapter's tags.
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
        if kind != "mlp":
            unique = list(dict.fromkeys([*captions, *self.preserve_prompts]))
            ids, mask = adapter_tokens(base, unique, adapter)
            self.tokens = {caption: (ids[i], mask[i]) for i, caption in enumerate(unique)}

    def stack_tokens(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-computed token ids and masks (B, T) of captions, for the adapters that enter the encoder."""
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
            tuned = encode_tokens(self.base, ids, mask, adapter, kind=self.kind)
        if not chosen:
            return tuned, None
        penalty = preservation_loss(self.stack_originals(chosen), tuned[len(captions) :], self.num_prompts)
        return tuned[: len(captions)], penalty
