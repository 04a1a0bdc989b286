"""What an adapter kind is: the one protocol the training loop, the adapter files and the renderer use.

A kind is one unit, as a PEFT method is: its config dataclass and `nn.Module`, its own command-line flags
(typed as an options dataclass whose defaults are the flags' defaults), how it is built from them, which
bases it fits, how it changes the tokens and the conditioning, and how reports name it. Code outside
`altadapter.adapters` asks a kind for these and never which kind it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from altadapter.encoding import encode_tokens, tokenize
from altadapter.model import AltDiffusionBase, BaseInfo


class AdapterKind:
    """Base class of the kinds; each kind module defines one subclass and the registry holds an instance."""

    name: ClassVar[str]  # as files, --kind and checkpoints spell it
    title: ClassVar[str]  # in report titles and table headers
    summary: ClassVar[str]  # where it acts, a few words for --help
    config_class: ClassVar[type]  # the module's hyperparameters, stored in the adapter file
    module_class: ClassVar[type[nn.Module]]
    options_class: ClassVar[type]  # the kind's own training flags, one field per flag
    train_command: ClassVar[str]  # what trains it, for messages that send a user there
    render_command: ClassVar[str]
    default_run_name: ClassVar[str]
    default_learning_rate: ClassVar[float]
    counterpart: ClassVar[str | None] = None  # the kind the write-up compares it with in one table
    # True when the adapter only transforms the encoder's output, which training can then cache per caption.
    acts_on_output: ClassVar[bool] = False
    vector_noun: ClassVar[str | None] = None  # what reports call its learned input vectors; None: it has none
    export_format: ClassVar[str | None] = None  # the format other tools load it from (export_adapter.py)

    # --- flags -------------------------------------------------------------------------------------------
    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """Add this kind's own flags (an argument group) to a training script's parser."""
        raise NotImplementedError

    def options(self, args: argparse.Namespace) -> Any:
        """The kind's options from parsed flags (validated by the options dataclass)."""
        return self.options_class(
            **{field.name: getattr(args, field.name) for field in fields(self.options_class)}
        )

    # --- building ----------------------------------------------------------------------------------------
    def build(self, options: Any, base: AltDiffusionBase, captions: Sequence[str], seed: int) -> nn.Module:
        """A fresh fp32 adapter sized for `base`, from its options and the training captions."""
        raise NotImplementedError

    def from_config(self, config: dict) -> nn.Module:
        """An untrained adapter from a config dict, as an adapter file's metadata stores it."""
        return self.module_class(self.config_class(**config))

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        """Why an adapter of this config cannot run on `base`, or None when it fits."""
        raise NotImplementedError

    def read_legacy(self, state: dict[str, torch.Tensor]) -> dict | None:
        """The config of a legacy `.pt` state dict of this kind, or None when it is not one."""
        return None

    # --- text to conditioning ----------------------------------------------------------------------------
    def conditioning_length(self, base: AltDiffusionBase, config: Any) -> int:
        """Positions of the tuned conditioning."""
        return base.info.model_max_length

    def tokenize(
        self, base: AltDiffusionBase, prompts: Sequence[str], config: Any, *, warn: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask (B, T) that `encode` takes."""
        return tokenize(base, prompts, base.info.model_max_length, warn=warn)

    def encode(
        self, base: AltDiffusionBase, ids: torch.Tensor, mask: torch.Tensor, module: nn.Module
    ) -> torch.Tensor:
        """The tuned conditioning (B, L, D) of `tokenize`'s output. `module` may be DDP-wrapped: it is
        called exactly once, as DDP needs per backward pass."""
        return self.transform(module, encode_tokens(base, ids, mask))

    def transform(self, module: nn.Module, conditioning: torch.Tensor) -> torch.Tensor:
        """The tuned conditioning from the original's, for kinds that act on the encoder's output."""
        raise NotImplementedError(f"a {self.name} adapter acts inside the encoder, not on its output")

    def positions_before_text(self, config: Any) -> int:
        """Learned positions between `<s>` and the text in the tuned conditioning (the prompt vectors)."""
        return 0

    def for_file(self, module: nn.Module) -> nn.Module:
        """The adapter as its file holds it (a kind may fold what only training needs)."""
        return module

    def detach(self, module: nn.Module, base: AltDiffusionBase) -> None:
        """Take back whatever using the adapter left in the shared base (most kinds leave nothing)."""

    def export(self, module: nn.Module, output_dir: Path, *, model_path: str) -> list[Path]:
        """Write the adapter in `export_format` into `output_dir`; returns the files written."""
        raise NotImplementedError(f"a {self.name} adapter has no export format")

    # --- reports ---------------------------------------------------------------------------------------
    def learned_vectors(self, module: nn.Module) -> torch.Tensor | None:
        """Learned input vectors (N, H) whose nearest vocabulary tokens a report lists; None: none."""
        return None

    def vector_labels(self, config: dict) -> list[str] | None:
        """A label per learned vector, or None to number them."""
        return None


def config_dict(adapter: nn.Module) -> dict:
    """An adapter's hyperparameters as a plain dict, tuples as lists: what JSON gives back."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(adapter.config).items()
    }


def learned_vectors(shape: tuple[int, int], init: torch.Tensor | None, what: str) -> nn.Parameter:
    """Learned input vectors (rows, H) in fp32, from `init` or random at the scale of XLM-R's own word
    embeddings (initializer_range 0.02)."""
    if init is None:
        init = torch.randn(shape) * 0.02
    elif tuple(init.shape) != shape:
        raise ValueError(f"{what} init has shape {tuple(init.shape)}, expected {shape}")
    return nn.Parameter(init.detach().clone().float())


def check_positive(owner: object, *names: str, prefix: str = "") -> None:
    """Raise ValueError naming the first of `names` below 1 on a config, or with prefix "--" an options class."""
    for name in names:
        if getattr(owner, name) < 1:
            raise ValueError(f"{prefix}{name} must be at least 1, got {getattr(owner, name)}")
