"""The write-up's prompt adapter: learned vectors joined to the frozen text encoder's input, after `<s>`.

`[<s>] [P_1..P_n] [text] [</s>] [<pad>...]`: XLM-R always saw `<s>` first in pre-training, so it stays
first, and the vectors still precede the text they steer. Positions are counted over the widened mask as
XLM-R counts them for token ids, and the sequence stays within its usable positions: with 100 vectors on
m9 the text is cut at 410 tokens and the conditioning keeps the original's 512 positions.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
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
    """`num_prompts` learned vectors of width `dim` (the base's word-embedding width, = its hidden width).

    depth > 1 adds deep prompts (P-tuning v2): vectors over the prompt positions at the input of encoder
    layers 1 .. depth - 1 too. reparam_dim > 0 computes the input vectors through prefix-tuning's small MLP
    while training; files hold the folded vectors (reparam_dim 0).
    """

    dim: int
    num_prompts: int = 100
    depth: int = 1
    reparam_dim: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "num_prompts", "dim", "depth")
        if self.reparam_dim < 0:
            raise ValueError(f"reparam_dim must be 0 (off) or positive, got {self.reparam_dim}")


class PromptAdapter(nn.Module):
    """`num_prompts` learned input vectors, (P, H), spliced in after `<s>`; deep ones (depth - 1, P, H)."""

    kind: ClassVar[str] = "prompt"

    def __init__(self, config: PromptConfig, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = learned_vectors((config.num_prompts, config.dim), init, "prompt")
        if config.depth > 1:
            self.deep = nn.Parameter(torch.zeros(config.depth - 1, config.num_prompts, config.dim))
        if config.reparam_dim:
            # Prefix-tuning's reparameterisation (Li and Liang 2021): vectors = E + MLP(E), the MLP's last
            # layer from zero so training starts where the plain vectors do; only the optimisation differs.
            self.reparam = nn.Sequential(
                nn.Linear(config.dim, config.reparam_dim),
                nn.Tanh(),
                nn.Linear(config.reparam_dim, config.dim),
            )
            nn.init.zeros_(self.reparam[2].weight)
            nn.init.zeros_(self.reparam[2].bias)

    def vectors(self) -> torch.Tensor:
        """The input vectors (P, H), through the reparameterisation where there is one."""
        if self.config.reparam_dim:
            return self.embeddings + self.reparam(self.embeddings)
        return self.embeddings

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input vectors repeated for a batch, (B, P, H), and the deep ones, (depth - 1, B, P, H) or None."""
        deep = self.deep.unsqueeze(1).expand(-1, batch_size, -1, -1) if self.config.depth > 1 else None
        return self.vectors().unsqueeze(0).expand(batch_size, -1, -1), deep

    def folded(self) -> PromptAdapter:
        """The same adapter without the reparameterisation, as files hold it."""
        if not self.config.reparam_dim:
            return self
        plain = PromptAdapter(replace(self.config, reparam_dim=0), self.vectors().detach())
        if self.config.depth > 1:
            plain.deep.data.copy_(self.deep.detach())
        return plain


@contextlib.contextmanager
def deep_prompts(encoder: nn.Module, deep: torch.Tensor | None) -> Iterator[None]:
    """Within the block, encoder layer l >= 1 sees deep[l - 1] (B, P, H) at the prompt positions 1 .. P."""
    if deep is None:
        yield
        return

    def overwrite(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            vectors = deep[index].to(hidden.dtype)
            hidden = torch.cat([hidden[:, :1], vectors, hidden[:, 1 + vectors.shape[1] :]], dim=1)
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": hidden}
            return (hidden, *args[1:]), kwargs

        return hook

    layers = encoder.roberta.encoder.layer
    handles = [
        layers[index + 1].register_forward_pre_hook(overwrite(index), with_kwargs=True)
        for index in range(deep.shape[0])
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class PromptOptions:
    """The prompt adapter's training flags."""

    num_prompts: int = 100
    init_text: str | None = None
    random_init: bool = False
    prompt_depth: int = 1
    prompt_reparam_dim: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "num_prompts", "prompt_depth", prefix="--")
        if self.prompt_reparam_dim < 0:
            raise ValueError(
                f"--prompt_reparam_dim must be 0 (off) or positive, got {self.prompt_reparam_dim}"
            )
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


@torch.no_grad()
def init_deep_prompts(base: AltDiffusionBase, adapter: PromptAdapter, captions: Sequence[str]) -> None:
    """Start each layer's deep vectors at the hidden states the input vectors give the prompt positions
    there (averaged over captions), so training starts from the plain prompt's output."""
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach())

    layers = base.text_encoder.roberta.encoder.layer[1 : adapter.config.depth]
    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in layers]
    try:
        kind = PromptKind()
        kind.encode(base, *kind.tokenize(base, captions or [""], adapter.config, warn=False), adapter)
    finally:
        for handle in handles:
            handle.remove()
    count = adapter.config.num_prompts
    adapter.deep.copy_(torch.stack([hidden[:, 1 : 1 + count].float().mean(dim=0) for hidden in captured]))


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
        group.add_argument(
            "--prompt_depth",
            type=int,
            default=PromptOptions.prompt_depth,
            help="deep prompts (P-tuning v2): learned vectors at the prompt positions of the first N encoder "
            "layers' inputs; 1 is the write-up's prompt, at the encoder's input only",
        )
        group.add_argument(
            "--prompt_reparam_dim",
            type=int,
            default=PromptOptions.prompt_reparam_dim,
            help="train the vectors through prefix-tuning's MLP of this width (0: off); the file holds the "
            "vectors it gives, so rendering is unchanged",
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
        if options.prompt_depth > base.info.num_layers:
            raise ValueError(
                f"--prompt_depth {options.prompt_depth}: this base's text encoder has {base.info.num_layers} layers"
            )
        config = PromptConfig(
            dim=base.info.hidden_size,
            num_prompts=options.num_prompts,
            depth=options.prompt_depth,
            reparam_dim=options.prompt_reparam_dim,
        )
        init = None  # random, at the scale of XLM-R word embeddings
        if not options.random_init:
            text = options.init_text or ", ".join(
                tag for tag, _ in TagVocabulary.from_captions(captions).ranked()[:INIT_TAGS]
            )
            ids = base.tokenizer(text, add_special_tokens=False).input_ids
            words = base.text_encoder.get_input_embeddings().weight
            init = prompt_init_from_text(words, ids, options.num_prompts, torch.Generator().manual_seed(seed))
        adapter = PromptAdapter(config, init)
        if config.depth > 1:
            init_deep_prompts(base, adapter, captions[:64])
        return adapter

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.hidden_size:
            return f"this prompt adapter is {config.get('dim')} wide but the base's hidden_size is {base.hidden_size}"
        if config["num_prompts"] > base.max_text_positions - 2:
            return f"{config['num_prompts']} prompt vectors do not fit this base's {base.max_text_positions} positions"
        if base.num_layers and config.get("depth", 1) > base.num_layers:
            return f"this prompt adapter is {config['depth']} layers deep but the base's text encoder has {base.num_layers}"
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
        vectors, deep = module(ids.shape[0])  # (B, P, H), (depth - 1, B, P, H) or None
        inputs_embeds = torch.cat(
            [words[:, :1], vectors.to(words.dtype), words[:, 1:]], dim=1
        )  # (B, T + P, H)
        with deep_prompts(base.text_encoder, deep):
            return encode_embeddings(base, inputs_embeds, prompt_attention_mask(mask, vectors.shape[1]))

    def positions_before_text(self, config: PromptConfig) -> int:
        return config.num_prompts

    def for_file(self, module: nn.Module) -> nn.Module:
        return module.folded()

    def learned_vectors(self, module: nn.Module) -> torch.Tensor:
        return module.vectors()
