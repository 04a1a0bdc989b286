"""What one micro-step trains on: its own seeded generator, its slice of the data order, its noise.

Every random draw of micro-step m on process r comes from a generator seeded by (seed, m, r), and the
data order from per-epoch permutations seeded by (seed, epoch). A resumed run therefore replays exactly
what an uninterrupted one would have done, with nothing but the step count to restore besides the
adapter, optimizer and lr-schedule state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from altadapter.data.records import Record
from altadapter.training.caches import LatentCache
from altadapter.training.config import OptimConfig


def step_generator(seed: int, micro_step: int, process: int) -> torch.Generator:
    """The generator of one micro-step on one process: noise, timesteps, flips, latent samples."""
    mixed = (seed * 1_000_003 + micro_step) * 1_009 + process
    return torch.Generator().manual_seed(mixed % (2**63))


def batch_indices(
    seed: int, micro_step: int, process: int, num_processes: int, batch: int, size: int
) -> torch.Tensor:
    """Indices of one micro-batch: a slice of the endless stream of per-epoch shuffles of the data."""
    start = (micro_step * num_processes + process) * batch
    positions = torch.arange(start, start + batch)
    epochs = positions // size
    out = torch.empty(batch, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        permutation = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
        chosen = epochs == epoch
        out[chosen] = permutation[positions[chosen] % size]
    return out


@dataclass
class MicroBatch:
    """One micro-step's inputs on the CPU: scaled latents, noise, timesteps, captions, and their generator."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    captions: list[str]
    generator: torch.Generator


def draw_micro_batch(
    optim: OptimConfig,
    random_flip: bool,
    cache: LatentCache,
    micro_step: int,
    process: int,
    num_processes: int,
    num_train_timesteps: int,
) -> MicroBatch:
    """Everything random about one micro-step, drawn from its own generator (see the module docstring)."""
    generator = step_generator(optim.seed, micro_step, process)
    indices = batch_indices(
        optim.seed, micro_step, process, num_processes, optim.batch_size, len(cache.records)
    )
    if random_flip:
        flips = torch.randint(0, 2, (len(indices),), generator=generator)
    else:
        flips = torch.zeros(len(indices), dtype=torch.long)
    latents = cache.sample(indices, flips, generator)
    noise = torch.randn(latents.shape, generator=generator)
    if optim.noise_offset:
        noise += optim.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (len(indices),), generator=generator)
    captions = [cache.records[i].caption for i in indices.tolist()]
    return MicroBatch(latents, noise, timesteps, captions, generator)


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded hold-out split: (train, validation)."""
    if fraction <= 0:
        return records, []
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, math.ceil(fraction * len(records)))
    if held >= len(records):
        raise ValueError(f"--validation_split {fraction} leaves no training images of {len(records)}")
    return [records[i] for i in sorted(order[held:])], [records[i] for i in sorted(order[:held])]
