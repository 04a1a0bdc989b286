"""Shared fixtures: tiny AltDiffusion-architecture models saved to disk and loaded by the real loader."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
from training_helpers import write_colour_dataset

from altadapter.model import AltDiffusionBase, load_base
from altadapter.testing.tiny_models import PRESETS, build_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny m9-style model folder (pads prompts to the tokenizer's length, like m9's 512)."""
    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-m9", PRESETS["tiny"])


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir: Path) -> AltDiffusionBase:
    return load_base(tiny_model_dir)


@pytest.fixture(scope="session")
def roomy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with 128 positions: room for every kind's default flags (the prompt kind's 100 vectors)."""
    size = dataclasses.replace(PRESETS["tiny"], model_max_length=128)
    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-roomy", size)


@pytest.fixture(scope="session")
def roomy_base(roomy_model_dir: Path) -> AltDiffusionBase:
    return load_base(roomy_model_dir)


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight flat-colour images whose captions name the colour: learnable in a few steps."""
    return write_colour_dataset(tmp_path_factory.mktemp("data") / "colours")


@pytest.fixture(scope="session")
def demo_script():
    """Import a script of demo/ by name (they are scripts, not a package)."""

    def load(name: str):
        folder = str(Path(__file__).resolve().parents[1] / "demo")
        sys.path.insert(0, folder)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(folder)

    return load
