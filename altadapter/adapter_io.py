"""Adapter files: `.safetensors` tensors plus metadata that says what the adapter is and which base it fits.

Loading never unpickles code: safetensors only, and a legacy `.pt` only through
`torch.load(..., weights_only=True)`. Every check that fails names the file and says what to do.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import safetensors
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

import altadapter
from altadapter.adapters import get_kind, kind_names
from altadapter.adapters.kind import config_dict
from altadapter.devices import DTYPES
from altadapter.fileio import write_safetensors
from altadapter.model import BaseInfo

FORMAT = "altadapter/1"


class AdapterFileError(ValueError):
    """An adapter file that cannot be used: unreadable, of the wrong kind, or for another base."""


@dataclass
class AdapterMetadata:
    """Everything an adapter file says about itself besides its tensors."""

    kind: str
    config: dict
    base: dict  # BaseInfo fields of the base it was trained on; empty for legacy files
    step: int = 0
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. validation losses, training flags

    def to_strings(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "config": json.dumps(self.config, sort_keys=True),
            "base": json.dumps(self.base, sort_keys=True),
            "step": str(self.step),
            "versions": json.dumps(self.versions, sort_keys=True),
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    @classmethod
    def from_strings(cls, path: Path, strings: dict[str, str]) -> AdapterMetadata:
        if strings.get("format") != FORMAT:
            trainers = sorted({get_kind(name).train_command.split()[0] for name in kind_names()})
            raise AdapterFileError(
                f"{path}: not an altadapter file (metadata format {strings.get('format')!r}, "
                f"expected {FORMAT!r}); train one with {' or '.join(trainers)}"
            )
        if "kind" in strings and strings["kind"] not in kind_names():
            raise AdapterFileError(
                f"{path}: an adapter of kind {strings.get('kind')!r}, which this version of altadapter "
                f"({altadapter.__version__}) does not know; it knows {', '.join(kind_names())}"
            )
        try:
            return cls(
                kind=strings["kind"],
                config=json.loads(strings["config"]),
                base=json.loads(strings["base"]),
                step=int(strings.get("step", 0)),
                versions=json.loads(strings.get("versions", "{}")),
                extra=json.loads(strings.get("extra", "{}")),
            )
        except (KeyError, ValueError) as error:
            raise AdapterFileError(
                f"{path}: damaged adapter metadata ({error}); re-export the adapter"
            ) from error


def library_versions() -> dict[str, str]:
    """Versions recorded in every adapter file, to explain differences between runs."""
    return {
        "altadapter": altadapter.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


def save_adapter(
    path: str | Path,
    adapter: nn.Module,
    base: BaseInfo,
    *,
    step: int = 0,
    save_dtype: str = "fp32",
    extra: dict | None = None,
) -> Path:
    """Write `adapter` atomically as `.safetensors` (fp32, or fp16/bf16 at half the size)."""
    path = Path(path)
    dtype = DTYPES[save_dtype]
    tensors = {
        name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in adapter.state_dict().items()
    }
    metadata = AdapterMetadata(
        kind=adapter.kind,
        config=config_dict(adapter),
        base=dict(base.__dict__),
        step=step,
        versions=library_versions(),
        extra=dict(extra or {}),
    )
    write_safetensors(path, tensors, metadata.to_strings())
    return path


def read_adapter_file(path: str | Path) -> tuple[dict[str, torch.Tensor], AdapterMetadata]:
    """Tensors and metadata of an adapter file, with no checks against a base."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such adapter file; pass the .safetensors a training script wrote")
    if path.suffix in (".pt", ".pth", ".bin"):
        return _read_legacy(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            strings = handle.metadata() or {}
        tensors = load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(
            f"{path}: not a readable .safetensors file ({error}); it may be truncated or corrupt, "
            "copy or export it again"
        ) from error
    return tensors, AdapterMetadata.from_strings(path, strings)


def _read_legacy(path: Path) -> tuple[dict[str, torch.Tensor], AdapterMetadata]:
    """A `.pt` state dict of this project's tensor names, read without unpickling any code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise AdapterFileError(
            f"{path}: refusing to unpickle it (it holds more than tensors, or is damaged: {error}); "
            "convert it to .safetensors on a machine where you trust the file"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise AdapterFileError(
            f"{path}: expected a dict of tensors (a state_dict), got {type(state).__name__}"
        )
    for name in kind_names():
        config = get_kind(name).read_legacy(state)
        if config is not None:
            return state, AdapterMetadata(name, config, base={})
    raise AdapterFileError(
        f"{path}: tensors {sorted(state)[:4]} are no adapter this version knows ({', '.join(kind_names())})"
    )


def check_kind(path: Path, metadata: AdapterMetadata, expected_kind: str | None) -> None:
    """Refuse an adapter of another kind than `expected_kind` (None accepts any), naming its own script."""
    if expected_kind is not None and metadata.kind != expected_kind:
        raise AdapterFileError(
            f"{path} is a {metadata.kind} adapter, not a {expected_kind} adapter: "
            f"render it with {get_kind(metadata.kind).render_command}"
        )


def check_against_base(
    path: Path, metadata: AdapterMetadata, base: BaseInfo, *, allow_other_base: bool
) -> None:
    """Refuse an adapter whose dimensions (or, unless allowed, weights fingerprint) do not fit `base`."""
    trained_on = metadata.base.get("name", "an unknown base")
    reason = get_kind(metadata.kind).check_base(metadata.config, base)
    if reason is not None:
        raise AdapterFileError(
            f"{path}: {reason}: it was trained on {trained_on}, pass that model as --model_path"
        )
    fingerprint = metadata.base.get("fingerprint")
    if fingerprint and fingerprint != base.fingerprint and not allow_other_base:
        raise AdapterFileError(
            f"{path}: trained on {trained_on} (fingerprint {fingerprint}), but this base's weights differ "
            f"(fingerprint {base.fingerprint}); pass the same base, or --allow_other_base to use it anyway"
        )


def load_adapter(
    path: str | Path,
    base: BaseInfo,
    *,
    expected_kind: str | None = None,
    allow_other_base: bool = False,
) -> tuple[nn.Module, AdapterMetadata]:
    """Read an adapter file, check it fits `base`, and return the fp32 adapter and its metadata."""
    path = Path(path)
    tensors, metadata = read_adapter_file(path)
    check_kind(path, metadata, expected_kind)
    check_against_base(path, metadata, base, allow_other_base=allow_other_base)
    return build_adapter(path, tensors, metadata), metadata


def build_adapter(path: Path, tensors: dict[str, torch.Tensor], metadata: AdapterMetadata) -> nn.Module:
    """The fp32 adapter, frozen, that a file's tensors and metadata describe."""
    try:
        adapter = get_kind(metadata.kind).from_config(metadata.config)
        adapter.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    except (TypeError, ValueError, RuntimeError) as error:
        raise AdapterFileError(
            f"{path}: tensors do not match the metadata ({' '.join(str(error).split())}); the file is damaged"
        ) from error
    return adapter.requires_grad_(False).eval()
