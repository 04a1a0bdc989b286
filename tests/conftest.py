"""Shared fixtures: tiny AltDiffusion-architecture models saved to disk and loaded by the real loader."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import write_aspect_dataset, write_colour_dataset, write_parquet_dataset

from altadapter.model import AltDiffusionBase, load_base
from altadapter.testing.tiny_models import PRESETS, build_model_dir

# One CPU thread per test process, and for the scripts it starts: the models here are tiny, so a second
# thread saves nothing, and two spinning OpenMP threads beside any other busy process (the other pytest-xdist
# worker, a CI neighbour) run tiny kernels several times slower. Tests that need a count set their own.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per CPU this process may run on (xdist's own count is of physical cores, which
    some VMs report as fewer than their CPUs), at most 4: past that, building each worker's session models
    costs more than it saves, and the smoke demo alone sets the suite's length."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, 4)


@pytest.fixture(scope="session", autouse=True)
def offline_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nothing is downloaded at test time, and what `datasets` prepares from the tests' parquet files goes to
    a temporary folder, not ~/.cache. Both libraries read these settings once, when first imported, so the
    imported modules are set as well as the environment (which the scripts run as subprocesses read)."""
    import datasets
    import huggingface_hub

    folder = tmp_path_factory.mktemp("hf_datasets")
    datasets.config.HF_DATASETS_CACHE = folder
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    os.environ.update(HF_DATASETS_CACHE=str(folder), HF_HUB_OFFLINE="1")
    return folder


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
def aspect_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six flat-colour pictures, 2:1, 1:2 and square in turn: three aspect-ratio buckets."""
    return write_aspect_dataset(tmp_path_factory.mktemp("data") / "aspects")


@pytest.fixture(scope="session")
def parquet_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour pictures as a folder of parquet files: an `image` column and a `tags` list column."""
    return write_parquet_dataset(tmp_path_factory.mktemp("data") / "parquet")


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
