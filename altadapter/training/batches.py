"""What one micro-step trains on: its own seeded generator, its slice of the data order, its noise.

Every random draw of micro-step m on process r comes from a generator seeded by (seed, m, r), and the
data order from per-epoch permutations seeded by (seed, epoch). A resumed run therefore replays exactly
what an uninterrupted one would have done, with nothing but the step count to restore besides the
adapter, optimizer and lr-schedule state.

An epoch shows each record `repeats` times (kohya's N_concept folders). Without buckets, micro-batch
(m, r) is a slice of the endless stream of epoch shuffles. With buckets, each epoch shuffles every bucket's
records, cuts each bucket into batches (its last one may be short) and shuffles the batches; micro-batch
(m, r) is batch m * processes + r of that stream, so every batch comes from one bucket and processes never
share one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from altadapter.data.records import Record
from altadapter.training.caches import LatentCache
from altadapter.training.captions import batch_captions
from altadapter.training.config import CaptionConfig, OptimConfig


def step_generator(seed: int, micro_step: int, process: int) -> torch.Generator:
    """The generator of one micro-step on one process: noise, timesteps, flips, latent samples, captions."""
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


def epoch_batches(seed: int, epoch: int, groups: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """One epoch of bucketed batches: each group shuffled and cut into batches, the batches shuffled."""

    def generator(part: int) -> torch.Generator:
        return torch.Generator().manual_seed(((seed * 7_919 + epoch) * 1_013 + part) % (2**63))

    batches: list[torch.Tensor] = []
    for part, members in enumerate(groups, start=1):
        batches.extend(members[torch.randperm(len(members), generator=generator(part))].split(batch))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator(0)).tolist()]


class BatchOrder:
    """Which records each micro-batch holds (see the module docstring); each epoch shows a record `repeats`
    times."""

    def __init__(
        self, records: Sequence[Record], groups: list[list[int]], batch: int, seed: int, *, bucketed: bool
    ) -> None:
        self.batch, self.seed, self.bucketed = batch, seed, bucketed
        # A record of r repeats stands r times in its group; with every repeat 1 a group is the record order.
        # Without buckets there is one group: every picture is cropped to the same square.
        self.groups = [
            torch.tensor([i for i in group for _ in range(records[i].repeats)]) for group in groups
        ]
        self._epoch: tuple[int, list[torch.Tensor]] = (-1, [])

    def indices(self, micro_step: int, process: int, num_processes: int) -> torch.Tensor:
        """The record indices of micro-batch (micro_step, process)."""
        if not self.bucketed:
            slots = self.groups[0]
            return slots[batch_indices(self.seed, micro_step, process, num_processes, self.batch, len(slots))]
        per_epoch = sum(math.ceil(len(group) / self.batch) for group in self.groups)
        epoch, number = divmod(micro_step * num_processes + process, per_epoch)
        if self._epoch[0] != epoch:  # consecutive steps share an epoch: shuffle it once
            self._epoch = (epoch, epoch_batches(self.seed, epoch, self.groups, self.batch))
        return self._epoch[1][number]


@dataclass
class MicroBatch:
    """One micro-step's inputs on the CPU: scaled latents, noise, timesteps, captions, and their generator."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    captions: list[str]
    generator: torch.Generator


@dataclass
class MicroBatches:
    """Draws every micro-batch of a run from the cache: a pure function of (seed, micro-step, process)."""

    cache: LatentCache
    order: BatchOrder
    optim: OptimConfig
    captions: CaptionConfig
    random_flip: bool
    num_train_timesteps: int

    def draw(self, micro_step: int, process: int, num_processes: int) -> MicroBatch:
        """Everything random about one micro-step, drawn from its own generator (see the module docstring)."""
        generator = step_generator(self.optim.seed, micro_step, process)
        indices = self.order.indices(micro_step, process, num_processes)
        if self.random_flip:
            flips = torch.randint(0, 2, (len(indices),), generator=generator)
        else:
            flips = torch.zeros(len(indices), dtype=torch.long)
        latents = self.cache.sample(indices, flips, generator)
        noise = torch.randn(latents.shape, generator=generator)
        if self.optim.noise_offset:
            noise += self.optim.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        timesteps = torch.randint(0, self.num_train_timesteps, (len(indices),), generator=generator)
        records = [self.cache.records[i] for i in indices.tolist()]
        return MicroBatch(
            latents, noise, timesteps, batch_captions(records, self.captions, generator), generator
        )


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded hold-out split: (train, validation)."""
    if fraction <= 0:
        return records, []
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, math.ceil(fraction * len(records)))
    if held >= len(records):
        raise ValueError(f"--validation_split {fraction} leaves no training images of {len(records)}")
    return [records[i] for i in sorted(order[held:])], [records[i] for i in sorted(order[:held])]
