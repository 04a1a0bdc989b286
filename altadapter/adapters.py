"""The adapter kinds: an MLP after the text encoder, learned prompt vectors before it, and (in their own
modules) new vectors for the domain's tags (`vocab_adapter`) and LoRA inside it (`lora_adapter`).

Each is a small `nn.Module` built from a validated config dataclass; none loads anything itself. They
meet the frozen encoder in `encoding`: `encode_tokens` splices prompt vectors in after `<s>`, swaps tag
vectors in for placeholder ids, or runs the encoder with the LoRA; `apply_mlp` runs the MLP over its
output; `encode_text` picks the path for any kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from altadapter.lora_adapter import LoRAAdapter, LoRAConfig
from altadapter.vocab_adapter import VocabAdapter, VocabConfig, learned_vectors

AdapterKind = Literal["mlp", "prompt", "vocab", "lora"]


@dataclass(frozen=True)
class MLPConfig:
    """`num_layers` Linear layers of width `dim` (the base's `project_dim`) over every token."""

    dim: int
    num_layers: int = 1

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")


@dataclass(frozen=True)
class PromptConfig:
    """`num_prompts` learned vectors of width `dim` (the base's word-embedding width)."""

    dim: int
    num_prompts: int = 100

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {self.num_prompts}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")


class MLPAdapter(nn.Module):
    """Residual MLP on the conditioning: (B, L, D) -> (B, L, D), out = x + f(x).

    One layer is exactly one `nn.Linear(D, D)` (590,592 parameters for m9's D=768); more layers put a
    GELU between Linears. The last Linear starts at zero, so an untrained adapter is the identity and
    training starts from the original model rather than from noise.
    """

    kind: ClassVar[AdapterKind] = "mlp"

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(nn.Linear(config.dim, config.dim) for _ in range(config.num_layers))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        hidden = conditioning
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if index < len(self.layers) - 1:
                hidden = nn.functional.gelu(hidden)
        return conditioning + hidden


class PromptAdapter(nn.Module):
    """`num_prompts` learned input vectors, (P, H); `encoding.encode_tokens` splices them in after `<s>`."""

    kind: ClassVar[AdapterKind] = "prompt"

    def __init__(self, config: PromptConfig, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = learned_vectors((config.num_prompts, config.dim), init, "prompt")

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt vectors repeated for a batch: (B, P, H)."""
        return self.embeddings.unsqueeze(0).expand(batch_size, -1, -1)


Adapter = MLPAdapter | PromptAdapter | VocabAdapter | LoRAAdapter
ADAPTER_CLASSES: dict[str, tuple[type[Adapter], type]] = {
    "mlp": (MLPAdapter, MLPConfig),
    "prompt": (PromptAdapter, PromptConfig),
    "vocab": (VocabAdapter, VocabConfig),
    "lora": (LoRAAdapter, LoRAConfig),
}


def build_adapter(kind: AdapterKind, config: dict) -> Adapter:
    """An untrained adapter of `kind` from a config dict (as stored in an adapter file's metadata)."""
    if kind not in ADAPTER_CLASSES:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {sorted(ADAPTER_CLASSES)}")
    adapter_class, config_class = ADAPTER_CLASSES[kind]
    return adapter_class(config_class(**config))


def config_dict(adapter: Adapter) -> dict:
    """The adapter's hyperparameters as a plain dict, tuples as lists: what JSON gives back."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(adapter.config).items()
    }


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
