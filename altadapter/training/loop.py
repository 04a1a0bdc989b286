"""The one training loop every adapter kind shares; the adapter is the only thing that differs.

Skeleton after diffusers' textual-inversion example: Accelerator -> frozen base in the mixed-precision
dtype -> caches -> prepare only the adapter, optimizer and schedule -> loop under `accumulate` -> log,
validate and checkpoint only on `sync_gradients` -> final adapter file. `train` reads top to bottom:
`setup_run`, then `training_step` per micro-step and `after_sync_step` per optimizer step, then
`save_final_adapter`. Why a resumed run is exact: see `training.batches`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from altadapter.adapter_io import save_adapter
from altadapter.adapters import Adapter, AdapterKind, config_dict
from altadapter.cli_args import UserError
from altadapter.data.prompts import read_prompts
from altadapter.data.records import Record, scan_dataset
from altadapter.model import AltDiffusionBase, load_base
from altadapter.rendering.sampler import RenderSettings, render_comparison, save_comparison
from altadapter.training.args import check_train_args
from altadapter.training.batches import draw_micro_batch, split_records
from altadapter.training.caches import LatentCache, build_latent_cache
from altadapter.training.checkpoints import (
    check_checkpoint_base,
    check_checkpoint_kind,
    find_resume_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from altadapter.training.conditioning import Conditioner, build_training_adapter
from altadapter.training.losses import diffusion_loss, validation_loss

logger = logging.getLogger(__name__)


class TrainingError(UserError):
    """A run that cannot go on (a non-finite loss)."""


@dataclass
class Run:
    """Everything a training run holds between steps. `adapter` is the accelerate-prepared module."""

    args: argparse.Namespace
    accelerator: Accelerator
    base: AltDiffusionBase
    adapter: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    noise_scheduler: object
    cache: LatentCache
    val_cache: LatentCache | None
    conditioner: Conditioner
    run_dir: Path
    sample_prompts: list[str]
    checkpoint_info: dict
    step: int = 0
    last_checkpoint: Path | None = None
    scores: dict[str, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step run here

    @property
    def unwrapped_adapter(self) -> Adapter:
        return self.accelerator.unwrap_model(self.adapter)

    def held_out_loss(self, tuned: bool) -> float:
        """The validation loss of the original model or of the adapter as it is now."""

        def through_adapter(captions: list[str]) -> torch.Tensor:
            return self.conditioner.tuned(self.adapter, captions)[0]

        return validation_loss(
            self.base,
            self.noise_scheduler,
            self.val_cache,
            through_adapter if tuned else self.conditioner.original,
            seed=self.args.seed,
            batch_size=self.args.batch_size,
        )


def train(args: argparse.Namespace, kind: AdapterKind) -> Path:
    """Train one adapter of `kind` on a frozen base; returns the final adapter file."""
    run = setup_run(args, kind)
    accelerator = run.accelerator
    if run.val_cache is not None:
        run.scores["val_loss_original"] = run.held_out_loss(tuned=False)
    bar = tqdm(
        total=args.max_train_steps,
        initial=run.step,
        desc=f"training {kind} adapter",
        disable=not accelerator.is_local_main_process,
    )
    micro_step = run.step * args.gradient_accumulation_steps
    started = time.perf_counter()
    while run.step < args.max_train_steps:
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
    bar.close()
    return save_final_adapter(run)


def training_step(run: Run, micro_step: int) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps when accelerate says gradients sync."""
    args, accelerator = run.args, run.accelerator
    batch = draw_micro_batch(
        args,
        run.cache,
        micro_step,
        accelerator.process_index,
        accelerator.num_processes,
        run.noise_scheduler.config.num_train_timesteps,
    )
    conditioning, penalty = run.conditioner.tuned(run.adapter, batch.captions, batch.generator)
    loss = diffusion_loss(
        run.base,
        run.noise_scheduler,
        conditioning,
        batch.latents.to(accelerator.device, run.base.dtype),
        batch.noise.to(accelerator.device, run.base.dtype),
        batch.timesteps.to(accelerator.device),
        args.snr_gamma,
    )
    if penalty is not None:
        loss = loss + args.preserve_weight * penalty
    accelerator.backward(loss)
    if accelerator.sync_gradients and args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.adapter.parameters(), args.max_grad_norm)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss


def after_sync_step(run: Run, loss: torch.Tensor) -> dict[str, float]:
    """Once per optimizer step: check and log the loss; validate, sample and checkpoint when due."""
    args, accelerator, step = run.args, run.accelerator, run.step
    mean_loss = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"loss became {mean_loss} at step {step}; last good checkpoint: {run.last_checkpoint or 'none'}. "
            "Lower --learning_rate, or use --mixed_precision bf16 instead of fp16"
        )
    logs = {"loss": mean_loss, "lr": run.lr_scheduler.get_last_lr()[0]}
    last = step == args.max_train_steps
    if step % args.validation_steps == 0 or last:
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
            save_validation_samples(run.base, run.unwrapped_adapter, run.sample_prompts, args, folder)
    accelerator.log(logs, step=step)
    if step % args.checkpointing_steps == 0 or last:
        run.last_checkpoint = save_checkpoint(
            accelerator, run.run_dir, step, run.checkpoint_info, total_limit=args.checkpoints_total_limit
        )
    return logs


def save_final_adapter(run: Run) -> Path:
    """Write the adapter file (main process) with its scores and flags as metadata; end the run."""
    args, accelerator = run.args, run.accelerator
    trained = run.unwrapped_adapter
    logger.info("adapter %s on process %d", adapter_digest(trained), accelerator.process_index)
    final = run.run_dir / f"{args.name}.safetensors"
    if accelerator.is_main_process:
        extra = {
            **run.scores,
            # What one step costs, to compare kinds; the median leaves out validation and checkpoint steps.
            "seconds_per_step": statistics.median(run.step_seconds) if run.step_seconds else None,
            "training": json.dumps({k: v for k, v in vars(args).items() if v is not None}, default=str),
        }
        save_adapter(final, trained, run.base.info, step=run.step, save_dtype=args.save_dtype, extra=extra)
        logger.info("saved %s (step %d)", final, run.step)
    accelerator.wait_for_everyone()
    # DDP's reducer holds the process group. Freed only after end_training has destroyed the group and a
    # peer process has exited, gloo's teardown can hang for good (seen in the 2-process LoRA run, whose
    # wrapper is freed by the garbage collector): free it now, while every process is still here.
    run.adapter = run.unwrapped_adapter
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    return final


def build_caches(
    args: argparse.Namespace,
    accelerator: Accelerator,
    base: AltDiffusionBase,
    train_records: list[Record],
    val_records: list[Record],
) -> tuple[LatentCache, LatentCache | None]:
    """VAE latents of the training and held-out images; the main process fills a --cache_dir first."""
    build = functools.partial(
        build_latent_cache,
        base,
        resolution=args.resolution,
        cache_dir=args.cache_dir,
        write=accelerator.is_main_process,
        progress=accelerator.is_local_main_process,
    )
    with accelerator.main_process_first():  # the others then read the main process's entries
        cache = build(train_records, random_flip=args.random_flip)
        val_cache = build(val_records, random_flip=False) if val_records else None
    return cache, val_cache


def prepare_optimization(
    args: argparse.Namespace, accelerator: Accelerator, adapter: Adapter
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and the lr schedule over the adapter's parameters, all three prepared by accelerate."""
    optimizer = torch.optim.AdamW(
        adapter.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay
    )
    # accelerate steps a prepared scheduler once per process each step, hence the multiplication.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    return accelerator.prepare(adapter, optimizer, lr_scheduler)


def setup_run(args: argparse.Namespace, kind: AdapterKind) -> Run:
    """Check flags, find a checkpoint to resume, load the base, build adapter and caches, prepare."""
    check_train_args(args)
    run_dir = Path(args.ckpt_dir) / args.name
    resume = find_resume_checkpoint(run_dir, args.resume_from_checkpoint)
    resume_info = read_checkpoint_info(resume) if resume else None
    if resume:
        check_checkpoint_kind(resume, resume_info, kind)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sample_prompts = (
        read_prompts(args.validation_prompts, flag="--validation_prompts") if args.validation_prompts else []
    )
    train_records, val_records = split_records(scan_dataset(args.data_dir), args.validation_split, args.seed)
    if args.validation_dir:
        val_records = scan_dataset(args.validation_dir)

    # The base runs in whatever accelerate actually runs with, e.g. `accelerate launch --mixed_precision fp16`.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    base = load_base(args.model_path, device=accelerator.device, dtype=weight_dtype)
    torch.manual_seed(args.seed)
    adapter = build_training_adapter(kind, args, base, [r.caption for r in train_records])
    if resume:
        check_checkpoint_kind(resume, resume_info, kind, config_dict(adapter))
        check_checkpoint_base(
            resume, resume_info, base.info.fingerprint, allow_other_base=args.allow_other_base
        )
    if args.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()

    cache, val_cache = build_caches(args, accelerator, base, train_records, val_records)
    all_captions = [r.caption for r in cache.records + (val_cache.records if val_cache else [])]
    conditioner = Conditioner(
        kind, base, adapter, all_captions, args, progress=accelerator.is_local_main_process
    )

    prepared, optimizer, lr_scheduler = prepare_optimization(args, accelerator, adapter)
    noise_scheduler = base.noise_scheduler()
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)
    run = Run(
        args=args,
        accelerator=accelerator,
        base=base,
        adapter=prepared,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        noise_scheduler=noise_scheduler,
        cache=cache,
        val_cache=val_cache,
        conditioner=conditioner,
        run_dir=run_dir,
        sample_prompts=sample_prompts,
        checkpoint_info={
            "kind": kind,
            "config": config_dict(adapter),
            "base_fingerprint": base.info.fingerprint,
            "model_path": str(args.model_path),
        },
    )
    if resume:
        accelerator.load_state(str(resume))
        run.step, run.last_checkpoint = resume_info["step"], resume
        logger.info("resumed from %s at step %d", resume, run.step)
    if accelerator.is_main_process:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | bool)}
        accelerator.init_trackers(args.name.replace("/", "_"), config=tracked)
    return run


def save_validation_samples(
    base: AltDiffusionBase, adapter: Adapter, prompts: list[str], args: argparse.Namespace, folder: Path
) -> None:
    """Tuned-vs-original grids of the validation prompts, rendered from fixed noise with the render code."""
    settings = RenderSettings(
        num_images=args.num_validation_images,
        num_inference_steps=args.validation_inference_steps,
        scheduler="dpm++2m",
        seed=args.seed,
    )
    save_comparison(
        render_comparison(base, adapter, prompts, settings=settings, progress=False), folder, settings
    )


def adapter_digest(adapter: Adapter) -> str:
    """A short hash of the adapter's weights, to show every process ends with the same adapter."""
    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]
