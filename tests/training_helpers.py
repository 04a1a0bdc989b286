"""Running the training scripts from tests: each kind's own script, its flags scaled down to a tiny model."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

from altadapter.adapters import get_kind
from altadapter.training.config import TrainingConfig
from altadapter.training.loop import train

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def write_colour_dataset(folder: Path, count: int = 8) -> Path:
    """Flat-colour images whose captions name the colour (learnable in a few steps); 7 distinct tags."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = list(COLOURS)[index % len(COLOURS)]
        Image.new("RGB", (40 + index, 48), COLOURS[name]).save(folder / f"img{index}.png")  # distinct bytes
        (folder / f"img{index}.txt").write_text(f"1girl, solo, {name} hair, dress", encoding="utf-8")
    return folder


def write_aspect_dataset(folder: Path, count: int = 6) -> Path:
    """Flat-colour pictures of three aspects in turn, 2:1, 1:2 and square, captioned by their colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = list(COLOURS)[index % len(COLOURS)]
        size = [(48, 24), (24, 48), (32, 32)][index % 3]
        Image.new("RGB", size, COLOURS[name]).save(folder / f"img{index}.png")
        (folder / f"img{index}.txt").write_text(f"1girl, solo, {name} hair, dress", encoding="utf-8")
    return folder


def write_parquet_dataset(folder: Path, count: int = 8) -> Path:
    """The colour dataset's pictures and tags as parquet (`image` bytes, `tags` a list), as a hub dataset has them."""
    import datasets

    source = write_colour_dataset(folder.parent / f"{folder.name}-pictures", count)
    rows = {"image": [], "tags": []}
    for index in range(count):
        rows["image"].append({"bytes": (source / f"img{index}.png").read_bytes(), "path": None})
        rows["tags"].append((source / f"img{index}.txt").read_text(encoding="utf-8").split(", "))
    features = datasets.Features({"image": datasets.Image(), "tags": datasets.List(datasets.Value("string"))})
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train-00000.parquet"))
    return folder


def kind_script(kind: str) -> tuple[Path, list[str]]:
    """The script that trains `kind` and the flags that select it (`--kind K` for train_adapter.py)."""
    script, *flags = get_kind(kind).train_command.split()
    return REPO / script, flags


def parse_training_args(kind: str, argv: list[str]):
    """`argv` parsed by the kind's own training script, as its command line would be."""
    script, flags = kind_script(kind)
    return importlib.import_module(script.stem).parse_args([*flags, *argv])


def common_args(data: Path, model: Path, out: Path, name: str, *extra: str) -> list[str]:
    """Flags every kind takes, scaled down to a tiny model and a few steps."""
    return [
        *("--data_dir", str(data), "--model_path", str(model), "--ckpt_dir", str(out), "--name", name),
        *("--resolution", "32", "--report_to", "none", "--batch_size", "3"),
        *("--max_train_steps", "4", "--checkpointing_steps", "2"),
        *extra,
    ]


def train_in_process(kind: str, argv: list[str]) -> Path:
    """Run a kind's training script's main path in this process, as a fresh process would."""
    try:
        return train(TrainingConfig.from_args(parse_training_args(kind, argv), kind))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def state_checksum(module: torch.nn.Module) -> str:
    """A hash of the module's own weights, under their own names; LoRA weights peft injected left out."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" not in name:
            digest.update(name.replace(".base_layer", "").encode() + tensor.float().numpy().tobytes())
    return digest.hexdigest()
