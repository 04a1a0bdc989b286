"""Sampling schedulers by name, each built from the base's own scheduler config (betas, offsets)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
)

from altadapter.errors import UserError
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


class TooFewStepsError(UserError):
    """--num_inference_steps below what the chosen scheduler can run."""


def least_steps(name: str, scheduler_config: dict) -> int:
    """The fewest inference steps scheduler `name` runs with over `scheduler_config`.

    PNDM without `skip_prk_steps` (m9's config, a DDIM one, leaves it unset) begins with Runge-Kutta
    warm-up steps over its last `pndm_order` (4) timesteps, so it needs at least that many.
    """
    scheduler = SCHEDULERS[name].from_config(scheduler_config)
    if isinstance(scheduler, PNDMScheduler) and not scheduler.config.skip_prk_steps:
        return scheduler.pndm_order
    return 1


def check_steps(name: str, steps: int, scheduler_config: dict) -> None:
    """Refuse, in one line naming the least that works and the schedulers that take `steps`, too few steps."""
    least = least_steps(name, scheduler_config)
    if steps >= least:
        return
    takers = [other for other in SCHEDULERS if least_steps(other, scheduler_config) <= steps]
    raise TooFewStepsError(
        f"--num_inference_steps {steps} is too few for --scheduler {name}, which needs at least {least} on "
        f"this model: use --num_inference_steps {least} or more, or --scheduler {' or '.join(takers)}"
    )
