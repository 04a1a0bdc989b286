"""Sampling schedulers by name, each built from the base's own scheduler config (betas, offsets)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
)

from altadapter.model import AltDiffusionBase

# PNDM is the sampler m9's model_index.json names (what the stock pipeline uses); DPM++ 2M gives usable
# images in 20-30 steps; Euler a draws fresh noise every step.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
}


def make_scheduler(base: AltDiffusionBase, name: str) -> SchedulerMixin:
    """A fresh scheduler `name` over the base's config; multistep schedulers keep history, so one per run."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(base.scheduler_config)
