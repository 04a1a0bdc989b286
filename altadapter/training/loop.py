"""The one training loop every adapter kind shares; the adapter is the only thing that differs.

`train` reads top to bottom: `setup_run` (training.setup), then `training_step` per micro-step under
accelerate's `accumulate` and `after_sync_step` per optimizer step (log, validate, checkpoint only when
gradients sync), then `save_final_adapter`. Why a resumed run is exact: see `training.batches`.
A SIGTERM or SIGINT ends the loop after the optimizer step it arrives in, every process at the same
step, with a checkpoint (`training.preemption`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn
from tqdm.auto import tqdm

from altadapter.adapter_io import save_adapter
from altadapter.errors import Stopped, UserError
from altadapter.model import AltDiffusionBase
from altadapter.rendering.sampler import RenderSettings, render_comparison, save_comparison
from altadapter.training.checkpoints import save_checkpoint, tensor_bytes
from altadapter.training.config import TrainingConfig
from altadapter.training.losses import diffusion_loss
from altadapter.training.preemption import StopSignals
from altadapter.training.processes import max_over_processes, write_on_main_process
from altadapter.training.setup import Run, setup_run

logger = logging.getLogger(__name__)


class TrainingError(UserError):
    """A run that cannot go on (a non-finite loss)."""


def train(config: TrainingConfig) -> Path:
    """Train one adapter on a frozen base as `config` says; returns the final adapter file.

    Raises Stopped after saving a checkpoint when a SIGTERM or SIGINT arrived during training. Every way
    out, a return, a stop or an error, ends the same: the DDP wrapper is freed, then the process group
    destroyed. DDP's reducer holds the group, so a wrapper still alive at destroy_process_group keeps the
    gloo group until the wrapper goes, which at interpreter exit may be after a peer process has gone.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config)
    except BaseException as error:
        # The failed frames (the run, DDP's own forward) hold the wrapper: clear their locals so it goes
        # now. The traceback still shows every line.
        _clear_frames(error)
        raise
    finally:
        end_process_group()
        torch.set_num_threads(threads)  # as the caller had it: a run in a library call leaves no trace


def end_process_group() -> None:
    """Destroy the process group of a distributed run (nothing otherwise), after the wrappers are freed."""
    gc.collect()  # a wrapper caught in a reference cycle
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        PartialState().destroy_process_group()


def _clear_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames of `error`'s traceback and of the exceptions it chains."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _train(config: TrainingConfig) -> Path:
    """train's run; returning drops the run and with it the DDP wrapper."""
    run = setup_run(config)  # pins this process's CPU threads (see setup.pin_threads)
    with StopSignals() as signals:
        run_steps(run, signals)
    return save_final_adapter(run)


def run_steps(run: Run, signals: StopSignals) -> None:
    """The optimizer steps from the run's step to --max_train_steps, unless a signal stops them first."""
    config, accelerator = run.config, run.accelerator
    if run.val_cache is not None:
        run.scores["val_loss_original"] = run.held_out_loss(tuned=False)
    bar = tqdm(
        total=config.optim.max_train_steps,
        initial=run.step,
        desc=f"training {config.kind} adapter",
        disable=not accelerator.is_local_main_process,
    )
    micro_step = run.step * config.optim.gradient_accumulation_steps
    started = time.perf_counter()
    with bar:  # closed on an error too, so that the error's one line starts a line of its own
        while run.step < config.optim.max_train_steps:
            with accelerator.accumulate(run.adapter):
                loss = training_step(run, micro_step)
            micro_step += 1
            if accelerator.sync_gradients:
                run.step += 1
                logs = after_sync_step(run, loss)  # its loss.item() waits for the device: the step is done
                run.step_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                # Every process takes part each step, so all stop at the same one wherever the signal came.
                number = max_over_processes(accelerator, signals.received)
                if number and run.step < config.optim.max_train_steps:
                    bar.close()
                    stop_at_signal(run, number)


def training_step(run: Run, micro_step: int) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps when accelerate says gradients sync."""
    optim, accelerator = run.config.optim, run.accelerator
    batch = run.batches.draw(micro_step, accelerator.process_index, accelerator.num_processes)
    conditioning, penalty = run.conditioner.tuned_with_penalty(run.adapter, batch.captions, batch.generator)
    loss = diffusion_loss(
        run.base,
        run.noise_scheduler,
        conditioning,
        batch.latents.to(accelerator.device, run.base.dtype),
        batch.noise.to(accelerator.device, run.base.dtype),
        batch.timesteps.to(accelerator.device),
        optim.snr_gamma,
    )
    if penalty is not None:
        loss = loss + run.config.preserve.preserve_weight * penalty
    accelerator.backward(loss)
    if accelerator.sync_gradients and optim.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.adapter.parameters(), optim.max_grad_norm)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss


def after_sync_step(run: Run, loss: torch.Tensor) -> dict[str, float]:
    """Once per optimizer step: check and log the loss; validate, sample and checkpoint when due."""
    config, accelerator, step = run.config, run.accelerator, run.step
    mean_loss = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"loss became {mean_loss} at step {step}; last good checkpoint: {run.last_checkpoint or 'none'}. "
            "Lower --learning_rate, or use --mixed_precision bf16 instead of fp16"
        )
    logs = {"loss": mean_loss, "lr": run.lr_scheduler.get_last_lr()[0]}
    last = step == config.optim.max_train_steps
    if step % config.validation.validation_steps == 0 or last:
        if run.val_cache is not None:
            run.scores["val_loss_adapter"] = run.held_out_loss(tuned=True)
            logs.update(run.scores)
            logger.info(
                "step %d: held-out loss original %.5f, adapter %.5f",
                step,
                run.scores["val_loss_original"],
                run.scores["val_loss_adapter"],
            )
        if run.sample_prompts and accelerator.is_main_process:
            folder = run.run_dir / "samples" / f"step-{step}"
            save_validation_samples(run.base, run.unwrapped_adapter, run.sample_prompts, config, folder)
    accelerator.log(logs, step=step)
    if step % config.output.checkpointing_steps == 0 or last:
        save_run_checkpoint(run)
    return logs


def save_run_checkpoint(run: Run) -> None:
    """Save `checkpoint-STEP` of the run as it is now, as every checkpoint is saved."""
    run.last_checkpoint = save_checkpoint(
        run.accelerator,
        run.run_dir,
        run.step,
        run.checkpoint_info,
        total_limit=run.config.output.checkpoints_total_limit,
        size_hint=tensor_bytes(run.unwrapped_adapter.state_dict(), run.optimizer.state_dict()),
    )


def stop_at_signal(run: Run, number: int) -> None:
    """Save a checkpoint of this step (unless the periodic one just did), say how to resume, raise Stopped."""
    checkpoint = run.run_dir / f"checkpoint-{run.step}"
    if run.last_checkpoint != checkpoint:
        save_run_checkpoint(run)
    accelerator = run.accelerator
    digest = adapter_digest(run.unwrapped_adapter)
    logger.info(
        "stopped at step %d with adapter %s on process %d", run.step, digest, accelerator.process_index
    )
    message = (
        f"stopped by {signal.Signals(number).name} at step {run.step}: checkpoint saved to {checkpoint}; "
        "resume with the same command and --resume_from_checkpoint latest"
    )
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)
    end_run(run)  # a barrier first: no process exits (and has a launcher signal the rest) before the line
    raise Stopped(message, signal_number=number)


def save_final_adapter(run: Run) -> Path:
    """Write the adapter file (main process) with its scores and flags as metadata; end the run."""
    config, accelerator = run.config, run.accelerator
    trained = config.adapter_kind.for_file(run.unwrapped_adapter)
    logger.info("adapter %s on process %d", adapter_digest(trained), accelerator.process_index)
    final = run.run_dir / f"{config.output.name}.safetensors"

    def write() -> None:
        extra = {
            **run.scores,
            # What one step costs, to compare kinds; the median leaves out validation and checkpoint steps.
            "seconds_per_step": statistics.median(run.step_seconds) if run.step_seconds else None,
            "num_threads": run.checkpoint_info["num_threads"],
            "training": json.dumps({k: v for k, v in config.flags().items() if v is not None}, default=str),
        }
        save_adapter(
            final, trained, run.base.info, step=run.step, save_dtype=config.output.save_dtype, extra=extra
        )
        logger.info("saved %s (step %d)", final, run.step)

    write_on_main_process(accelerator, write)
    end_run(run)
    return final


def end_run(run: Run) -> None:
    """Wait for every process, then end accelerate's trackers; train destroys the process group once
    the run, and with it the DDP wrapper, is freed."""
    run.accelerator.wait_for_everyone()
    for tracker in run.accelerator.trackers:  # what end_training does but destroying the group
        tracker.finish()


def save_validation_samples(
    base: AltDiffusionBase, adapter: nn.Module, prompts: list[str], config: TrainingConfig, folder: Path
) -> None:
    """Tuned-vs-original grids of the validation prompts, rendered from fixed noise with the render code."""
    settings = RenderSettings(
        num_images=config.validation.num_validation_images,
        num_inference_steps=config.validation.validation_inference_steps,
        scheduler="dpm++2m",
        seed=config.optim.seed,
    )
    save_comparison(
        render_comparison(base, adapter, prompts, settings=settings, progress=False), folder, settings
    )


def adapter_digest(adapter: nn.Module) -> str:
    """A short hash of the adapter's weights, to show every process ends with the same adapter."""
    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]
