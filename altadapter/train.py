"""The one training loop both training scripts share; the adapter kind is the only thing that differs.

Skeleton after diffusers' textual-inversion example: Accelerator -> frozen base in the mixed-precision
dtype -> caches -> prepare only the adapter, optimizer and schedule -> loop under `accumulate` -> log,
validate and checkpoint only on `sync_gradients` -> final adapter file.

Every random draw of micro-step m on process r comes from a generator seeded by (seed, m, r), and the
data order from per-epoch permutations seeded by (seed, epoch). A resumed run therefore replays exactly
what an uninterrupted one would have done, with nothing but the step count to restore besides the
adapter, optimizer and lr-schedule state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from tqdm.auto import tqdm

from altadapter.adapter_io import save_adapter
from altadapter.adapters import Adapter, AdapterKind, config_dict
from altadapter.caches import LatentCache, build_latent_cache
from altadapter.checkpoints import (
    check_checkpoint_base,
    check_checkpoint_kind,
    find_resume_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from altadapter.conditioning import Conditioner, build_training_adapter
from altadapter.model import AltDiffusionBase, load_base
from altadapter.prompts import read_prompts
from altadapter.records import Record, scan_dataset
from altadapter.render import RenderSettings, render_comparison, save_comparison
from altadapter.train_args import check_train_args

logger = logging.getLogger(__name__)
VALIDATION_TIMESTEPS = 8  # fixed timesteps per held-out image, spread over the schedule


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss)."""


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
    args: argparse.Namespace,
    cache: LatentCache,
    micro_step: int,
    process: int,
    num_processes: int,
    num_train_timesteps: int,
) -> MicroBatch:
    """Everything random about one micro-step, drawn from its own generator (see the module docstring)."""
    generator = step_generator(args.seed, micro_step, process)
    indices = batch_indices(
        args.seed, micro_step, process, num_processes, args.batch_size, len(cache.records)
    )
    if args.random_flip:
        flips = torch.randint(0, 2, (len(indices),), generator=generator)
    else:
        flips = torch.zeros(len(indices), dtype=torch.long)
    latents = cache.sample(indices, flips, generator)
    noise = torch.randn(latents.shape, generator=generator)
    if args.noise_offset:
        noise += args.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
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


def diffusion_loss(
    base: AltDiffusionBase,
    noise_scheduler,
    conditioning: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The latent-diffusion objective on the frozen UNet: epsilon or v prediction, optional Min-SNR weights."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = base.unet(noisy, timesteps, encoder_hidden_states=conditioning.to(base.dtype)).sample
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.minimum(snr, torch.full_like(snr, snr_gamma)) / snr
    if noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights * snr / (snr + 1)  # Min-SNR for v targets (Hang et al., eq. 9)
    per_item = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3)
    )
    return (per_item * weights).mean()


@torch.no_grad()
def validation_loss(
    base: AltDiffusionBase,
    noise_scheduler,
    cache: LatentCache,
    conditioner: Conditioner,
    *,
    tuned: bool,
    seed: int,
    batch_size: int,
) -> float:
    """Held-out denoising loss at fixed timesteps with fixed noise: comparable across runs and adapters."""
    total, count = 0.0, 0
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.linspace(steps * 0.05, steps * 0.95, VALIDATION_TIMESTEPS).long()
    captions = [record.caption for record in cache.records]
    pairs = [(i, t) for i in range(len(captions)) for t in timesteps.tolist()]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        indices = torch.tensor([i for i, _ in chunk])
        latents = cache.mean(indices).to(base.device, base.dtype)
        noise = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed + 7 * i + t))
                for i, t in chunk
            ]
        ).to(base.device, base.dtype)
        conditioning = conditioner([captions[i] for i, _ in chunk], tuned=tuned)
        t = torch.tensor([t for _, t in chunk], device=base.device)
        total += diffusion_loss(base, noise_scheduler, conditioning, latents, noise, t).item() * len(chunk)
        count += len(chunk)
    return total / count


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


def train(args: argparse.Namespace, kind: AdapterKind) -> Path:
    """Train one adapter of `kind` on a frozen base; returns the final adapter file."""
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
    # The base runs in whatever accelerate actually runs with, e.g. `accelerate launch --mixed_precision fp16`.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    sample_prompts = (
        read_prompts(args.validation_prompts, flag="--validation_prompts") if args.validation_prompts else []
    )
    records = scan_dataset(args.data_dir)
    train_records, val_records = split_records(records, args.validation_split, args.seed)
    if args.validation_dir:
        val_records = scan_dataset(args.validation_dir)

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

    progress = accelerator.is_local_main_process
    with accelerator.main_process_first():
        # The main process fills a --cache_dir first; the others then read its entries.
        cache, val_cache = (
            build_latent_cache(
                base,
                part,
                resolution=args.resolution,
                random_flip=args.random_flip and part is train_records,
                cache_dir=args.cache_dir,
                write=accelerator.is_main_process,
                progress=progress,
            )
            if part
            else None
            for part in (train_records, val_records)
        )
    all_captions = [r.caption for r in cache.records + (val_cache.records if val_cache else [])]
    conditioner = Conditioner(kind, base, adapter, all_captions, args, progress=progress)

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
    wrapped, optimizer, lr_scheduler = accelerator.prepare(adapter, optimizer, lr_scheduler)
    conditioner.adapter = wrapped
    noise_scheduler = base.noise_scheduler()
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)

    step = 0
    last_checkpoint = None
    if resume:
        accelerator.load_state(str(resume))
        step, last_checkpoint = resume_info["step"], resume
        logger.info("resumed from %s at step %d", resume, step)
    if accelerator.is_main_process:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | bool)}
        accelerator.init_trackers(args.name.replace("/", "_"), config=tracked)

    checkpoint_info = {
        "kind": kind,
        "config": config_dict(adapter),
        "base_fingerprint": base.info.fingerprint,
        "model_path": str(args.model_path),
    }
    scores = {}
    if val_cache is not None:
        scores["val_loss_original"] = validation_loss(
            base,
            noise_scheduler,
            val_cache,
            conditioner,
            tuned=False,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    bar = tqdm(
        total=args.max_train_steps, initial=step, desc=f"training {kind} adapter", disable=not progress
    )
    micro_step = step * args.gradient_accumulation_steps
    while step < args.max_train_steps:
        with accelerator.accumulate(wrapped):
            batch = draw_micro_batch(
                args,
                cache,
                micro_step,
                accelerator.process_index,
                accelerator.num_processes,
                noise_scheduler.config.num_train_timesteps,
            )
            latents = batch.latents.to(accelerator.device, weight_dtype)
            noise = batch.noise.to(accelerator.device, weight_dtype)
            conditioning, penalty = conditioner.tuned_with_preservation(batch.captions, batch.generator)
            loss = diffusion_loss(
                base,
                noise_scheduler,
                conditioning,
                latents,
                noise,
                batch.timesteps.to(accelerator.device),
                args.snr_gamma,
            )
            if penalty is not None:
                loss = loss + args.preserve_weight * penalty
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(wrapped.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        mean_loss = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"loss became {mean_loss} at step {step}; last good checkpoint: {last_checkpoint or 'none'}. "
                "Lower --learning_rate, or use --mixed_precision bf16 instead of fp16"
            )
        logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{logs['lr']:.2e}")
        if val_cache is not None and (step % args.validation_steps == 0 or step == args.max_train_steps):
            scores["val_loss_adapter"] = validation_loss(
                base,
                noise_scheduler,
                val_cache,
                conditioner,
                tuned=True,
                seed=args.seed,
                batch_size=args.batch_size,
            )
            logs.update(scores)
            logger.info(
                "step %d: held-out loss original %.5f, adapter %.5f",
                step,
                scores["val_loss_original"],
                scores["val_loss_adapter"],
            )
        if (
            sample_prompts
            and accelerator.is_main_process
            and (step % args.validation_steps == 0 or step == args.max_train_steps)
        ):
            folder = run_dir / "samples" / f"step-{step}"
            save_validation_samples(base, accelerator.unwrap_model(wrapped), sample_prompts, args, folder)
        accelerator.log(logs, step=step)
        if step % args.checkpointing_steps == 0 or step == args.max_train_steps:
            last_checkpoint = save_checkpoint(
                accelerator, run_dir, step, checkpoint_info, total_limit=args.checkpoints_total_limit
            )
    bar.close()

    trained = accelerator.unwrap_model(wrapped)
    logger.info("adapter %s on process %d", adapter_digest(trained), accelerator.process_index)
    final = run_dir / f"{args.name}.safetensors"
    if accelerator.is_main_process:
        extra = {
            **scores,
            "training": json.dumps({k: v for k, v in vars(args).items() if v is not None}, default=str),
        }
        save_adapter(final, trained, base.info, step=step, save_dtype=args.save_dtype, extra=extra)
        logger.info("saved %s (step %d)", final, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
