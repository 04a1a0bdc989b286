"""The LoRA adapter: low-rank updates of the text encoder's attention projections, applied through peft.

What kohya users train with `--network_train_text_encoder_only`: each targeted Linear W of every encoder
layer computes W x + (alpha / rank) * B A x, with A (rank, H) and B (H, rank); B starts at zero, so an
untrained adapter is the original encoder. The adapter owns A and B (so the optimizer, accelerate, DDP
and checkpoints see exactly them); `attach` injects peft's LoRA layers into the shared, frozen encoder,
pointing them at those weights, and leaves them inactive, so the encoder's own forward stays the
original's. Only `LoRAAdapter.forward` selects this adapter, per call, through peft's `adapter_names`.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from altadapter.adapters.kind import AdapterKind, check_positive
from altadapter.encoding import encoder_mask
from altadapter.fileio import atomic_write, write_safetensors
from altadapter.model import AltDiffusionBase, BaseInfo

# User-facing target names -> module names in each layer of diffusers' RobertaSeriesModelWithTransformation.
TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "out": "attention.output.dense",
}
LAYERS = "roberta.encoder.layer"
_NAMES = itertools.count()


@dataclass(frozen=True)
class LoRAConfig:
    """Rank-`rank` updates, scaled by alpha / rank, of the `targets` in `num_layers` layers `dim` wide."""

    dim: int
    num_layers: int
    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self) -> None:
        # Kept in one canonical order, so the same choice always reads as the same config.
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {list(TARGETS)}")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct names from {list(TARGETS)}, got {list(self.targets)}")
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in self.targets))
        check_positive(self, "dim", "num_layers", "rank")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    def module_paths(self) -> list[str]:
        """Names of the targeted Linear modules in the encoder, layer by layer."""
        return [f"{LAYERS}.{i}.{TARGETS[t]}" for i in range(self.num_layers) for t in self.targets]

    def peft_config(self) -> LoraConfig:
        """The same adapter as peft describes it (no dropout: the frozen encoder runs in eval mode)."""
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=self.module_paths(), lora_dropout=0.0
        )


class LoRAAdapter(nn.Module):
    """LoRA weights of the encoder's attention projections; forward runs the encoder with them.

    Submodules mirror the encoder's module names, so `state_dict()` keys are peft's, e.g.
    `roberta.encoder.layer.0.attention.self.query.lora_A.weight` (rank, H) and `...lora_B.weight` (H, rank):
    2 * rank * H parameters per target and layer (786,432 for rank 4 on q, k, v, out of m9's 24 layers).
    """

    kind: ClassVar[str] = "lora"

    def __init__(self, config: LoRAConfig) -> None:
        super().__init__()
        self.config = config
        # This adapter's name inside peft's layers: several adapters may share one base encoder.
        self.adapter_name = f"altadapter_lora_{next(_NAMES)}"
        for path in config.module_paths():
            pair = nn.Module()
            pair.lora_A = nn.Linear(config.dim, config.rank, bias=False)  # peft's init: kaiming uniform
            pair.lora_B = nn.Linear(config.rank, config.dim, bias=False)
            nn.init.zeros_(pair.lora_B.weight)
            _add_submodule(self, path, pair)

    def forward(
        self, encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder's output with this LoRA: (B, T) ids -> (B, T, D)."""
        names = [self.adapter_name] * input_ids.shape[0]
        hooks = [
            layer.register_forward_pre_hook(functools.partial(_select, adapter_names=names), with_kwargs=True)
            for layer in self.attach(encoder)
        ]
        try:
            # The encoder runs as in every other encoding (accelerate wraps a prepared adapter's forward
            # in autocast under mixed precision): the frozen base's dtype, no autocast.
            with torch.autocast(input_ids.device.type, enabled=False):
                return encoder(input_ids, attention_mask=attention_mask, return_dict=True)[0]
        finally:
            for hook in hooks:
                hook.remove()

    def attach(self, encoder: nn.Module) -> list[BaseTunerLayer]:
        """peft's LoRA layers of this adapter in `encoder` (injected on first use), with this A and B."""
        paths = self.config.module_paths()
        modules = dict(encoder.named_modules())
        missing = [
            path
            for path in paths
            if not isinstance(modules.get(path), nn.Linear | BaseTunerLayer)
            or modules[path].in_features != self.config.dim
        ]
        if missing:
            raise ValueError(
                f"this text encoder has no {self.config.dim}-wide Linear {missing[0]}: this lora adapter "
                f"fits an XLM-R encoder of {self.config.num_layers} layers of width {self.config.dim}"
            )
        if not all(self.adapter_name in getattr(modules[path], "lora_A", {}) for path in paths):
            self._inject(encoder)
            modules = dict(encoder.named_modules())
        layers = []
        for path in paths:
            layer, own = modules[path], self.get_submodule(path)
            if layer.lora_A[self.adapter_name] is not own.lora_A:  # new, or a copy of this adapter was here
                layer.lora_A[self.adapter_name] = own.lora_A
                layer.lora_B[self.adapter_name] = own.lora_B
            layers.append(layer)
        return layers

    def _inject(self, encoder: nn.Module) -> None:
        """Add this adapter's (empty) LoRA layers to `encoder`, all of its LoRA layers left inactive."""
        # peft's set_adapter / inject switch requires_grad of adapter weights; restore every flag after it.
        flags = {parameter: parameter.requires_grad for parameter in encoder.parameters()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            # low_cpu_mem_usage: peft's own A and B stay on the meta device; `attach` puts ours in.
            inject_adapter_in_model(
                self.config.peft_config(), encoder, adapter_name=self.adapter_name, low_cpu_mem_usage=True
            )
        for module in encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([])  # the encoder's own forward stays the original model's
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)

    def release(self, encoder: nn.Module) -> None:
        """Take this adapter's layers out of `encoder`; a layer left with no adapter is the plain Linear again."""
        for path in self.config.module_paths():
            layer = encoder.get_submodule(path)
            if not isinstance(layer, BaseTunerLayer) or self.adapter_name not in layer.lora_A:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peft warns that no adapter stays active: none ever was
                layer.delete_adapter(self.adapter_name)
            if not layer.lora_A:
                parent, _, name = path.rpartition(".")
                setattr(encoder.get_submodule(parent), name, layer.get_base_layer())
        configs = getattr(encoder, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(self.adapter_name, None)
            if not configs:
                del encoder.peft_config


def _select(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]) -> tuple[tuple, dict]:
    """Forward pre-hook: apply the named adapter to every row of this call, as peft's mixed batches do."""
    return args, {**kwargs, "adapter_names": adapter_names}


def _add_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` at dotted `path` under `root`, creating empty containers on the way."""
    *parents, name = path.split(".")
    for part in parents:
        if part not in dict(root.named_children()):
            root.add_module(part, nn.Module())
        root = root.get_submodule(part)
    root.add_module(name, module)


@dataclass(frozen=True)
class LoRAOptions:
    """The LoRA adapter's training flags; `lora_alpha` None means the rank (a scale of 1)."""

    rank: int = 4
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        check_positive(self, "rank", prefix="--")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"--lora_targets names a projection twice: {' '.join(self.lora_targets)}")


class LoRAKind(AdapterKind):
    """Inside the encoder: the encoder runs with this LoRA, forward and backward, every training step."""

    name = "lora"
    title = "LoRA"
    summary = "low-rank updates of its attention"
    config_class = LoRAConfig
    module_class = LoRAAdapter
    options_class = LoRAOptions
    train_command = "train_adapter.py --kind lora"
    render_command = "render_adapter.py"
    default_run_name = "altm9-lora"
    default_learning_rate = 1e-4
    export_format = "peft"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("LoRA adapter")
        group.add_argument(
            "--rank",
            type=int,
            default=LoRAOptions.rank,
            help="LoRA rank (rank 4 on query, key, value, out: 786,432 parameters on m9)",
        )
        group.add_argument(
            "--lora_alpha",
            type=float,
            default=LoRAOptions.lora_alpha,
            help="LoRA alpha: the update is scaled by alpha / rank; unset (%(default)s): the rank, a scale of 1",
        )
        group.add_argument(
            "--lora_targets",
            nargs="+",
            choices=list(TARGETS),
            default=list(LoRAOptions.lora_targets),
            help="attention projections of every encoder layer to adapt (out: the attention output dense)",
        )

    def build(
        self, options: LoRAOptions, base: AltDiffusionBase, captions: Sequence[str], seed: int
    ) -> LoRAAdapter:
        """LoRA on --lora_targets of every encoder layer; B starts at zero, so training starts at the original."""
        config = LoRAConfig(
            dim=base.info.hidden_size,
            num_layers=base.text_encoder.config.num_hidden_layers,
            rank=options.rank,
            alpha=options.lora_alpha if options.lora_alpha is not None else float(options.rank),
            targets=options.lora_targets,
        )
        return LoRAAdapter(config)

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.hidden_size:
            return f"this lora adapter is {config.get('dim')} wide but the base's hidden_size is {base.hidden_size}"
        if base.num_layers and config.get("num_layers") != base.num_layers:
            return (
                f"this lora adapter has {config.get('num_layers')} layers but the base's text encoder has "
                f"{base.num_layers}"
            )
        return None

    def encode(
        self, base: AltDiffusionBase, ids: torch.Tensor, mask: torch.Tensor, module: nn.Module
    ) -> torch.Tensor:
        encoder = base.text_encoder
        return module(encoder, ids.to(encoder.device), encoder_mask(base, mask)).to(encoder.dtype)

    def detach(self, module: nn.Module, base: AltDiffusionBase) -> None:
        module.release(base.text_encoder)

    def export(self, module: nn.Module, output_dir: Path, *, model_path: str) -> list[Path]:
        """A PEFT adapter folder: `PeftModel.from_pretrained(pipe.text_encoder, DIR)` loads it."""
        peft_config = module.config.peft_config()
        peft_config.base_model_name_or_path = model_path
        settings = peft_config.to_dict()
        settings["target_modules"] = sorted(settings["target_modules"])  # a set in peft's own dict
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(output_dir / "adapter_config.json") as handle:
            json.dump(settings, handle, indent=2, default=str)
        # PEFT's own key names: the encoder sits at base_model.model in a PeftModel.
        tensors = {
            f"base_model.model.{name}": t.detach().float().cpu() for name, t in module.state_dict().items()
        }
        write_safetensors(output_dir / "adapter_model.safetensors", tensors, {"format": "pt"})
        return [output_dir / "adapter_config.json", output_dir / "adapter_model.safetensors"]
