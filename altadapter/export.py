"""An adapter file in the format another tool loads: diffusers textual inversion (vocab), PEFT (LoRA)."""

from __future__ import annotations

from pathlib import Path

from altadapter.adapter_io import build_adapter, read_adapter_file
from altadapter.adapters import get_kind, kind_names


def export_formats() -> dict[str, str]:
    """Each kind that can be exported -> its format."""
    return {name: get_kind(name).export_format for name in kind_names() if get_kind(name).export_format}


def export_adapter(
    adapter_path: str | Path, fmt: str, output_dir: str | Path, *, model_path: str
) -> list[Path]:
    """Write the adapter at `adapter_path` as `fmt` into `output_dir`; returns the files written.

    `model_path` is the base it will be used with: its tokenizer decides the tokens of a vocab export.
    """
    path = Path(adapter_path)
    tensors, metadata = read_adapter_file(path)
    kind = get_kind(metadata.kind)
    if kind.export_format != fmt:
        exist = ", ".join(f"{name} -> --format {form}" for name, form in export_formats().items())
        raise ValueError(
            f"{path} is a {metadata.kind} adapter, which has no --format {fmt}; exports that exist: {exist}"
        )
    return kind.export(build_adapter(path, tensors, metadata), Path(output_dir), model_path=model_path)
