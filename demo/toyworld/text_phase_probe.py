"""Which text phase makes the toy encoder steerable? A fresh encoder per recipe, scored by the steering probe.

The toy base trains its text encoder first and freezes it (`text_pretraining`); how that phase trains it
decides what a prompt adapter can later do through it. A run here trains only that phase (minutes, no
VAE or UNet), saves the encoder in a model folder beside an untrained UNet and VAE that the probe never
runs, loads it back with `load_base` as a real model is loaded, and measures it with `steering`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from altadapter.model import AltDiffusionBase
from altadapter.testing.tiny_models import (
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    save_model_dir,
)
from toyworld import captions, world
from toyworld.base_config import ToyBaseConfig
from toyworld.base_data import build_caption_bank
from toyworld.steering import fit_plain_probe, steer, steering_adapters
from toyworld.text_pretraining import train_text_encoder

logger = logging.getLogger(__name__)


def train_probe_model(config: ToyBaseConfig, folder: str | Path) -> dict:
    """Train a fresh text encoder with `config`'s text phase on the CPU and save a model folder around it.

    Returns the text phase's report (steps, seconds, the plain-caption probe accuracy per template).
    """
    torch.manual_seed(config.seed)
    size = config.size
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, size.model_max_length)
    text_encoder = build_text_encoder(size, len(tokenizer))
    bank = build_caption_bank(tokenizer, config, np.random.default_rng(config.seed))
    report = train_text_encoder(text_encoder, bank, config, torch.device("cpu"), config.time_budget_s)
    save_model_dir(
        folder, tokenizer=tokenizer, text_encoder=text_encoder, unet=build_unet(size), vae=build_vae(size)
    )
    return report


def steer_every_adapter(
    base: AltDiffusionBase,
    *,
    num_prompts: int,
    steps: int,
    learning_rate: float,
    seed: int,
    num_layers: int = 2,
) -> dict[str, dict[str, float]]:
    """The steering probe's held-out scores of the MLP and of the shallow, reparameterised and deep prompt.

    The probe reads the plain captions it was fitted to under "plain probe"; the adapters are trained on
    900 long domain prompts and scored on 90 held-out ones (chance of all three right: 1.1%).
    """
    probe, plain = fit_plain_probe(base)
    train = captions.domain_prompts(900, seed, num_tags=captions.TRAIN_NUM_TAGS)
    heldout = captions.domain_prompts(90, seed + 1, num_tags=captions.TRAIN_NUM_TAGS)
    scores = {"plain probe": plain}
    for kind, adapter in steering_adapters(base, num_layers, num_prompts, seed).items():
        scores[kind] = steer(
            base, probe, adapter, train, heldout, steps=steps, learning_rate=learning_rate, seed=seed
        )
        logger.info("%s: all three %.1f%%", kind, 100 * scores[kind]["all"])
    return scores


def score_cells(scores: dict[str, float]) -> list[str]:
    """Shape colour, background, shape and all three, as table cells."""
    return [f"{100 * scores[name]:.1f}%" for name in (*world.ATTRIBUTE_NAMES, "all")]


ADAPTER_COLUMNS = ("mlp", "prompt", "prompt, reparameterised", "prompt, deep")

TABLE_HEADER = [
    "text phase",
    "encoder",
    "positions",
    "seed",
    "worst template",
    "vectors",
    "MLP",
    "prompt",
    "reparameterised",
    "deep",
    "minutes",
]


def results_table(records: list[dict]) -> list[list[str]]:
    """One row per run of demo/probe_text_phase.py: the encoder's recipe, its probe, every adapter's all three."""
    rows = []
    for record in records:
        flags, size = record["flags"], record["size"]
        objective = "probe + identity" + (
            f" + masked-LM x{flags['masked_lm_weight']:g}" if flags["masked_lm_weight"] else ""
        )
        encoder = f"{size['num_hidden_layers']} x {size['hidden_size']}, {size['num_attention_heads']} heads"
        all_three = [f"{100 * record['scores'][kind]['all']:.1f}%" for kind in ADAPTER_COLUMNS]
        rows.append(
            [
                objective,
                encoder,
                str(size["model_max_length"]),
                str(flags["seed"]),
                f"{100 * min(record['text_phase']['probe_accuracy'].values()):.1f}%",
                str(flags["num_prompts"]),
                *all_three,
                f"{record['seconds'] / 60:.0f}",
            ]
        )
    return rows
