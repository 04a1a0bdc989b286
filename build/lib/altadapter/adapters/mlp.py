"""The write-up's MLP adapter: Linear layer(s) over every token of the frozen text encoder's output."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from altadapter.adapters.kind import AdapterKind, check_positive
from altadapter.model import AltDiffusionBase, BaseInfo


@dataclass(frozen=True)
class MLPConfig:
    """`num_layers` Linear layers of width `dim` (the base's `project_dim`) over every token."""

    dim: int
    num_layers: int = 1

    def __post_init__(self) -> None:
        check_positive(self, "num_layers", "dim")


class MLPAdapter(nn.Module):
    """Residual MLP on the conditioning: (B, L, D) -> (B, L, D), out = x + f(x).

    One layer is exactly one `nn.Linear(D, D)` (590,592 parameters for m9's D=768); more layers put a
    GELU between Linears. The last Linear starts at zero, so an untrained adapter is the identity and
    training starts from the original model rather than from noise.
    """

    kind: ClassVar[str] = "mlp"

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


@dataclass(frozen=True)
class MLPOptions:
    """The MLP's training flags."""

    num_layers: int = 1

    def __post_init__(self) -> None:
        check_positive(self, "num_layers", prefix="--")


class MLPKind(AdapterKind):
    """After the encoder: its output per caption is fixed, so training caches it and never runs the encoder."""

    name = "mlp"
    title = "MLP"
    summary = "Linear layers after the encoder"
    config_class = MLPConfig
    module_class = MLPAdapter
    options_class = MLPOptions
    train_command = "text_encoder_util_mlp_transfer.py"
    render_command = "text_encoder_gen_show_mlp.py"
    default_run_name = "altm9-single-layer"
    default_learning_rate = 1e-4
    counterpart = "prompt"
    acts_on_output = True

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("MLP adapter")
        group.add_argument(
            "--num_layers",
            type=int,
            default=MLPOptions.num_layers,
            help="Linear layers after the text encoder (1 = one 768x768 Linear on m9, 590,592 parameters)",
        )

    def build(
        self, options: MLPOptions, base: AltDiffusionBase, captions: Sequence[str], seed: int
    ) -> MLPAdapter:
        return MLPAdapter(MLPConfig(dim=base.info.project_dim, num_layers=options.num_layers))

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.project_dim:
            return f"this mlp adapter is {config.get('dim')} wide but the base's project_dim is {base.project_dim}"
        return None

    def read_legacy(self, state: dict[str, torch.Tensor]) -> dict | None:
        """The write-up's `.pt` files: a state dict of `layers.i.weight` / `layers.i.bias`."""
        layer_keys = {f"layers.{i}.{part}" for i in range(len(state) // 2) for part in ("weight", "bias")}
        if not state or set(state) != layer_keys:
            return None
        return {"dim": state["layers.0.weight"].shape[0], "num_layers": len(state) // 2}

    def transform(self, module: nn.Module, conditioning: torch.Tensor) -> torch.Tensor:
        # next(parameters()) rather than .layers: the adapter may be wrapped by DDP during training.
        tuned = module(conditioning.to(next(module.parameters()).dtype))
        return tuned.to(conditioning.dtype)
