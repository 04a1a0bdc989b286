"""Everything a training run holds between steps, and how it is set up from its config.

Skeleton after diffusers' textual-inversion example: Accelerator -> frozen base in the mixed-precision
dtype -> the adapter from its kind's options -> caches -> prepare only the adapter, optimizer and schedule
-> restore a checkpoint's state when resuming.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from torch import nn

from altadapter.adapters.kind import config_dict
from altadapter.data.prompts import read_prompts
from altadapter.data.records import Record, scan_dataset
from altadapter.model import AltDiffusionBase, load_base
from altadapter.training.batches import BatchOrder, MicroBatches, split_records
from altadapter.training.caches import LatentCache, build_latent_cache
from altadapter.training.checkpoints import (
    check_checkpoint_base,
    check_checkpoint_kind,
    find_resume_checkpoint,
    read_checkpoint_info,
)
from altadapter.training.conditioning import Conditioner
from altadapter.training.config import OptimConfig, TrainingConfig
from altadapter.training.losses import validation_loss

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a training run holds between steps. `adapter` is the accelerate-prepared module."""

    config: TrainingConfig
    accelerator: Accelerator
    base: AltDiffusionBase
    adapter: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    noise_scheduler: object
    cache: LatentCache
    val_cache: LatentCache | None
    batches: MicroBatches
    conditioner: Conditioner
    run_dir: Path
    sample_prompts: list[str]
    checkpoint_info: dict
    step: int = 0
    last_checkpoint: Path | None = None
    scores: dict[str, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step run here

    @property
    def unwrapped_adapter(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.adapter)

    def held_out_loss(self, tuned: bool) -> float:
        """The validation loss of the original model or of the adapter as it is now."""

        def through_adapter(captions: list[str]) -> torch.Tensor:
            return self.conditioner.tuned_with_penalty(self.adapter, captions)[0]

        return validation_loss(
            self.base,
            self.noise_scheduler,
            self.val_cache,
            through_adapter if tuned else self.conditioner.original,
            seed=self.config.optim.seed,
            batch_size=self.config.optim.batch_size,
        )


def setup_run(config: TrainingConfig) -> Run:
    """Find a checkpoint to resume, load the base, build adapter and caches, prepare; resume if asked."""
    kind, run_dir = config.adapter_kind, config.output.run_dir
    resume = find_resume_checkpoint(run_dir, config.output.resume_from_checkpoint)
    resume_info = read_checkpoint_info(resume) if resume else None
    if resume:
        check_checkpoint_kind(resume, resume_info, kind.name)
    accelerator = make_accelerator(config)  # may set the threads of a multi-process CPU run: pin after it
    num_threads = pin_threads(config.precision.num_threads, resume_info)
    sample_prompts = (
        read_prompts(config.validation.validation_prompts, flag="--validation_prompts")
        if (config.validation.validation_prompts)
        else []
    )
    train_records, val_records = load_records(config, accelerator)

    # The base runs in whatever accelerate actually runs with, e.g. `accelerate launch --mixed_precision fp16`.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    base = load_base(config.model_path, device=accelerator.device, dtype=weight_dtype)
    torch.manual_seed(config.optim.seed)
    train_captions = [caption for record in train_records for caption in record.captions]
    adapter = kind.build(config.adapter, base, train_captions, config.optim.seed)
    if resume:
        check_checkpoint_kind(resume, resume_info, kind.name, config_dict(adapter))
        check_checkpoint_base(
            resume, resume_info, base.info.fingerprint, allow_other_base=config.allow_other_base
        )
    if config.precision.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()

    cache, val_cache = build_caches(config, accelerator, base, train_records, val_records)
    conditioner = Conditioner(
        kind,
        base,
        adapter,
        fixed_captions(config, cache, val_cache),
        config.preserve,
        progress=accelerator.is_local_main_process,
    )
    prepared, optimizer, lr_scheduler = prepare_optimization(config.optim, accelerator, adapter)
    noise_scheduler = base.noise_scheduler()
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)
    run = Run(
        config=config,
        accelerator=accelerator,
        base=base,
        adapter=prepared,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        noise_scheduler=noise_scheduler,
        cache=cache,
        val_cache=val_cache,
        batches=micro_batches(config, cache, noise_scheduler.config.num_train_timesteps),
        conditioner=conditioner,
        run_dir=run_dir,
        sample_prompts=sample_prompts,
        checkpoint_info={
            "kind": kind.name,
            "config": config_dict(adapter),
            "base_fingerprint": base.info.fingerprint,
            "model_path": config.model_path,
            "num_threads": num_threads,
        },
    )
    if resume:
        accelerator.load_state(str(resume))
        run.step, run.last_checkpoint = resume_info["step"], resume
        logger.info("resumed from %s at step %d", resume, run.step)
    return run


def pin_threads(requested: int | None, resume_info: dict | None) -> int:
    """Fix this process's CPU threads for the whole run: --num_threads, else the resumed checkpoint's,
    else what torch starts with (OMP_NUM_THREADS, or the cores); returns the count checkpoints record.

    Why: a CPU reduction (a sum, a matrix product's inner sums) split over N threads adds its partial
    results in an order that depends on N, and until torch.set_num_threads is called MKL may pick fewer
    threads for a call on its own (MKL_DYNAMIC). A resumed run matches an uninterrupted one bit for bit
    only with the same count, so it takes the checkpoint's unless told otherwise.
    """
    recorded = resume_info.get("num_threads") if resume_info else None
    threads = requested or recorded or torch.get_num_threads()
    if recorded and threads != recorded:
        logger.warning(
            "--num_threads %d: the checkpoint was trained with %d, so the resumed run will not match an "
            "uninterrupted one bit for bit",
            threads,
            recorded,
        )
    torch.set_num_threads(threads)  # also when unchanged: it is what turns MKL's own choice off
    return threads


def load_records(config: TrainingConfig, accelerator: Accelerator) -> tuple[list[Record], list[Record]]:
    """The training and held-out records: --validation_split of the source, or --validation_dir."""
    with accelerator.main_process_first():  # `datasets` prepares a source once, the others then read it
        records = config.source.load()
    train_records, val_records = split_records(records, config.data.validation_split, config.optim.seed)
    if config.data.validation_dir:
        val_records = scan_dataset(config.data.validation_dir)
    shown = sum(record.repeats for record in train_records)
    if shown != len(train_records) and accelerator.is_main_process:
        logger.info("kohya repeats: an epoch shows %d pictures of %d records", shown, len(train_records))
    return train_records, val_records


def micro_batches(config: TrainingConfig, cache: LatentCache, num_train_timesteps: int) -> MicroBatches:
    """What each micro-step draws from the cache, in batches of one bucket each with --enable_bucket."""
    order = BatchOrder(
        cache.records,
        cache.groups(),
        config.optim.batch_size,
        config.optim.seed,
        bucketed=config.buckets.enable_bucket,
    )
    return MicroBatches(
        cache, order, config.optim, config.captions, config.data.random_flip, num_train_timesteps
    )


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's Accelerator, its trackers started on the main process."""
    report_to = config.output.report_to
    accelerator = Accelerator(
        mixed_precision=config.precision.mixed_precision,
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(
            project_dir=str(config.output.run_dir), logging_dir=str(config.output.run_dir / "logs")
        ),
    )
    if config.precision.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        tracked = {k: v for k, v in config.flags().items() if isinstance(v, int | float | str | bool)}
        accelerator.init_trackers(config.output.name.replace("/", "_"), config=tracked)
    return accelerator


def build_caches(
    config: TrainingConfig,
    accelerator: Accelerator,
    base: AltDiffusionBase,
    train_records: list[Record],
    val_records: list[Record],
) -> tuple[LatentCache, LatentCache | None]:
    """VAE latents of the training and held-out images; the main process fills a --cache_dir first."""
    build = functools.partial(
        build_latent_cache,
        base,
        resolution=config.data.resolution,
        buckets=config.buckets.sizes(),
        cache_dir=config.data.cache_dir,
        write=accelerator.is_main_process,
        progress=accelerator.is_local_main_process,
    )
    with accelerator.main_process_first():  # the others then read the main process's entries
        cache = build(train_records, random_flip=config.data.random_flip)
        val_cache = build(val_records, random_flip=False) if val_records else None
    if config.buckets.enable_bucket and accelerator.is_main_process:
        logger.info("aspect-ratio buckets (width x height: training pictures): %s", bucket_counts(cache))
    return cache, val_cache


def bucket_counts(cache: LatentCache) -> str:
    """How many training records each bucket holds, each counted once per repeat, as an epoch shows them."""
    return ", ".join(
        f"{width}x{height}: {sum(cache.records[i].repeats for i in group)}"
        for (width, height), group in zip(cache.sizes, cache.groups(), strict=True)
    )


def fixed_captions(config: TrainingConfig, cache: LatentCache, val_cache: LatentCache | None) -> list[str]:
    """The captions a run's conditioning caches hold: the held-out ones, and the training ones unless
    the caption flags make a step's text new (then those are encoded when a step needs them)."""
    held_out = [record.caption for record in val_cache.records] if val_cache else []
    if config.captions.changes_captions:
        return held_out
    return [caption for record in cache.records for caption in record.captions] + held_out


def prepare_optimization(
    optim: OptimConfig, accelerator: Accelerator, adapter: nn.Module
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and the lr schedule over the adapter's parameters, all three prepared by accelerate."""
    optimizer = torch.optim.AdamW(
        adapter.parameters(), lr=optim.learning_rate, weight_decay=optim.adam_weight_decay
    )
    # accelerate steps a prepared scheduler once per process each step, hence the multiplication.
    lr_scheduler = get_scheduler(
        optim.lr_scheduler,
        optimizer,
        num_warmup_steps=optim.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=optim.max_train_steps * accelerator.num_processes,
    )
    return accelerator.prepare(adapter, optimizer, lr_scheduler)
