"""The write-up's prompt adapter: learned vectors joined to the frozen text encoder's input, after `<s>`.

`[<s>] [P_1..P_n] [text] [</s>] [<pad>...]`: XLM-R always saw `<s>` first in pre-training, so it stays
first, and the vectors still precede the text they steer. Positions are counted over the widened mask as
XLM-R counts them for token ids, and the sequence stays within its usable positions: with 100 vectors on
m9 the text is cut at 410 tokens and the conditioning keeps the original's 512 positions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from altadapter.adapters.kind import AdapterKind, check_positive, learned_vectors
from altadapter.data.prompts import TagVocabulary
from altadapter.encoding import encode_embeddings, tokenize
from altadapter.model import AltDiffusionBase, BaseInfo

INIT_TAGS = 32  # most frequent dataset tags used as the default --init_text


@dataclass(frozen=True)
class PromptConfig:
    """`num_prompts` learned vectors of width `dim` (the base's word-embedding width)."""

    dim: int
    num_prompts: int = 100

    def __post_init__(self) -> None:
        check_positive(self, "num_prompts", "dim")


class PromptAdapter(nn.Module):
    """`num_prompts` learned input vectors, (P, H), spliced in after `<s>`."""

    kind: ClassVar[str] = "prompt"

    def __init__(self, config: PromptConfig, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = learned_vectors((config.num_prompts, config.dim), init, "prompt")

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt vectors repeated for a batch: (B, P, H)."""
        return self.embeddings.unsqueeze(0).expand(batch_size, -1, -1)


@dataclass(frozen=True)
class PromptOptions:
    """The prompt adapter's training flags."""

    num_prompts: int = 100
    init_text: str | None = None
    random_init: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "num_prompts", prefix="--")
        if self.random_init and self.init_text:
            raise ValueError("--random_init and --init_text contradict each other; pass one")


def prompt_init_from_text(
    word_embeddings: torch.Tensor, token_ids: list[int], num_prompts: int, generator: torch.Generator
) -> torch.Tensor:
    """Prompt vectors copied from the word embeddings of `token_ids`, cycled to fill `num_prompts` rows.

    Starting from real words (for example the dataset's most frequent tags) puts the vectors where the
    encoder expects inputs; small noise breaks the ties between repeated rows.
    """
    if not token_ids:
        raise ValueError("--init_text produced no tokens; give some words or leave it empty for random init")
    ids = torch.tensor([token_ids[i % len(token_ids)] for i in range(num_prompts)])
    rows = word_embeddings.detach().float().cpu()[ids]
    repeated = torch.arange(num_prompts) >= len(token_ids)
    noise = torch.randn(rows.shape, generator=generator) * rows.std() * 0.1
    return rows + noise * repeated.unsqueeze(1)


def prompt_attention_mask(attention_mask: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """The text's mask (B, T) widened by the prompt vectors after `<s>`: (B, T + P)."""
    ones = attention_mask.new_ones(attention_mask.shape[0], num_prompts)
    return torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)


def text_token_budget(base: AltDiffusionBase, num_prompts: int) -> int:
    """Token ids (with `<s>` and `</s>`) that fit beside `num_prompts` vectors in the encoder's positions."""
    budget = min(base.info.model_max_length + num_prompts, base.info.max_text_positions) - num_prompts
    if budget < 2:
        raise ValueError(
            f"{num_prompts} prompt vectors leave no room for text in the encoder's "
            f"{base.info.max_text_positions} positions; use at most {base.info.max_text_positions - 2}"
        )
    return budget


class PromptKind(AdapterKind):
    """Before the encoder: the vectors pass through every encoder layer, which runs every training step."""

    name = "prompt"
    title = "Prompt"
    summary = "learned vectors before it"
    config_class = PromptConfig
    module_class = PromptAdapter
    options_class = PromptOptions
    train_command = "text_encoder_util.py"
    render_command = "text_encoder_gen_show.py"
    default_run_name = "altm9-prompt-embedding"
    default_learning_rate = 1e-3
    counterpart = "mlp"
    vector_noun = "prompt vector"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("prompt adapter")
        group.add_argument(
            "--num_prompts",
            type=int,
            default=PromptOptions.num_prompts,
            help="learned vectors placed after <s> (100 x 1024 = 102,400 parameters on m9)",
        )
        group.add_argument(
            "--init_text",
            default=PromptOptions.init_text,
            help="initialise the vectors from this text's word embeddings (default: the dataset's most "
            "frequent tags)",
        )
        group.add_argument(
            "--random_init", action="store_true", help="initialise the vectors randomly instead of from text"
        )

    def build(
        self, options: PromptOptions, base: AltDiffusionBase, captions: Sequence[str], seed: int
    ) -> PromptAdapter:
        """Prompt vectors from --init_text (default: the dataset's most frequent tags) unless --random_init."""
        limit = base.info.max_text_positions - 2
        if options.num_prompts > limit:
            raise ValueError(
                f"--num_prompts {options.num_prompts}: this base's text encoder places "
                f"{base.info.max_text_positions} tokens and needs 2 for <s> and </s>; use at most {limit}"
            )
        config = PromptConfig(dim=base.info.hidden_size, num_prompts=options.num_prompts)
        if options.random_init:
            return PromptAdapter(config)  # random, at the scale of XLM-R word embeddings
        text = options.init_text or ", ".join(
            tag for tag, _ in TagVocabulary.from_captions(captions).ranked()[:INIT_TAGS]
        )
        ids = base.tokenizer(text, add_special_tokens=False).input_ids
        words = base.text_encoder.get_input_embeddings().weight
        init = prompt_init_from_text(words, ids, options.num_prompts, torch.Generator().manual_seed(seed))
        return PromptAdapter(config, init)

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.hidden_size:
            return f"this prompt adapter is {config.get('dim')} wide but the base's hidden_size is {base.hidden_size}"
        if config["num_prompts"] > base.max_text_positions - 2:
            return f"{config['num_prompts']} prompt vectors do not fit this base's {base.max_text_positions} positions"
        return None

    def read_legacy(self, state: dict[str, torch.Tensor]) -> dict | None:
        """The write-up's `.pt` files: a state dict holding one (P, H) `embeddings` tensor."""
        if set(state) != {"embeddings"} or state["embeddings"].ndim != 2:
            return None
        num_prompts, dim = state["embeddings"].shape
        return {"dim": dim, "num_prompts": num_prompts}

    def conditioning_length(self, base: AltDiffusionBase, config: PromptConfig) -> int:
        return min(base.info.model_max_length + config.num_prompts, base.info.max_text_positions)

    def tokenize(
        self, base: AltDiffusionBase, prompts: Sequence[str], config: PromptConfig, *, warn: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(base, prompts, text_token_budget(base, config.num_prompts), warn=warn)

    def encode(
        self, base: AltDiffusionBase, ids: torch.Tensor, mask: torch.Tensor, module: nn.Module
    ) -> torch.Tensor:
        words = base.text_encoder.get_input_embeddings()(ids.to(base.text_encoder.device))  # (B, T, H)
        vectors = module(ids.shape[0]).to(words.dtype)  # (B, P, H)
        inputs_embeds = torch.cat([words[:, :1], vectors, words[:, 1:]], dim=1)  # (B, T + P, H)
        return encode_embeddings(base, inputs_embeds, prompt_attention_mask(mask, vectors.shape[1]))

    def positions_before_text(self, config: PromptConfig) -> int:
        return config.num_prompts

    def learned_vectors(self, module: nn.Module) -> torch.Tensor:
        return module.embeddings
