"""A training run's configuration, typed and checked once where a script's flags are parsed.

Each group mirrors an argument group of `training.args` (its fields are the flags' names); the adapter's
own options are its kind's dataclass. `TrainingConfig.from_args` validates everything that can be checked
before a model is loaded, so a typo never waits for the base.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from altadapter.adapters import get_kind
from altadapter.adapters.kind import AdapterKind
from altadapter.data.buckets import BucketRange
from altadapter.data.images import Size, check_resolution
from altadapter.data.sources import DataSource


def _from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


def _check_file(flag: str, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"--{flag} {value}: no such file")


@dataclass(frozen=True)
class DataConfig:
    """What becomes of the pictures (the source is a `DataSource`): their size, caches, the held-out part."""

    resolution: int
    random_flip: bool
    cache_dir: str | None
    validation_split: float
    validation_dir: str | None

    def __post_init__(self) -> None:
        check_resolution(self.resolution, "--resolution")
        if self.validation_dir is not None and not Path(self.validation_dir).is_dir():
            raise ValueError(f"--validation_dir {self.validation_dir}: no such folder")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"--validation_split {self.validation_split}: must be in [0, 1)")


@dataclass(frozen=True)
class CaptionConfig:
    """kohya's caption conventions, drawn per micro-step: tag shuffling, tag and caption dropout."""

    shuffle_caption: bool
    keep_tokens: int
    caption_separator: str
    caption_tag_dropout_rate: float
    caption_dropout_rate: float

    def __post_init__(self) -> None:
        if self.keep_tokens < 0:
            raise ValueError(f"--keep_tokens must be at least 0, got {self.keep_tokens}")
        if not self.caption_separator:
            raise ValueError("--caption_separator must not be empty")
        for name in ("caption_tag_dropout_rate", "caption_dropout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be in [0, 1]")

    @property
    def changes_captions(self) -> bool:
        """Whether a step may train on another text than a record's caption (then no caption cache holds it)."""
        return self.shuffle_caption or self.caption_tag_dropout_rate > 0 or self.caption_dropout_rate > 0


@dataclass(frozen=True)
class BucketConfig:
    """kohya's aspect-ratio buckets: pictures of about resolution² pixels at their own aspect."""

    resolution: int
    enable_bucket: bool
    min_bucket_reso: int | None
    max_bucket_reso: int | None
    bucket_reso_steps: int | None

    def __post_init__(self) -> None:
        if not self.enable_bucket:
            for name in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"--{name} takes effect only with --enable_bucket; add it or drop --{name}"
                    )
        self.sizes()  # a range without a bucket fails here, before the base loads

    def sizes(self) -> list[Size] | None:
        """The buckets (width, height), or None without --enable_bucket (square crops at --resolution)."""
        if not self.enable_bucket:
            return None
        return BucketRange.scaled(
            self.resolution, self.min_bucket_reso, self.max_bucket_reso, self.bucket_reso_steps
        ).sizes()


@dataclass(frozen=True)
class OutputConfig:
    """Where the run writes, how often it checkpoints, and whether it resumes."""

    ckpt_dir: str
    name: str
    save_dtype: str
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None
    report_to: str

    def __post_init__(self) -> None:
        if self.checkpointing_steps < 1:
            raise ValueError(f"--checkpointing_steps must be at least 1, got {self.checkpointing_steps}")

    @property
    def run_dir(self) -> Path:
        return Path(self.ckpt_dir) / self.name


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation: batches, steps, learning-rate schedule, seed and the loss's options."""

    batch_size: int
    max_train_steps: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    adam_weight_decay: float
    seed: int
    snr_gamma: float | None
    noise_offset: float

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_train_steps", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class PrecisionConfig:
    """The frozen base's precision and the speed options."""

    mixed_precision: str | None
    allow_tf32: bool
    gradient_checkpointing: bool
    num_threads: int | None

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"--num_threads must be at least 1, got {self.num_threads}")


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out loss and sample renders every `validation_steps`."""

    validation_steps: int
    validation_prompts: str | None
    num_validation_images: int
    validation_inference_steps: int

    def __post_init__(self) -> None:
        _check_file("validation_prompts", self.validation_prompts)


@dataclass(frozen=True)
class PreserveConfig:
    """The penalty that keeps general prompts' conditioning near the original's."""

    preserve_weight: float
    preserve_prompts: str | None
    preserve_batch_size: int

    def __post_init__(self) -> None:
        _check_file("preserve_prompts", self.preserve_prompts)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run depends on; `adapter` holds the kind's own options."""

    kind: str
    model_path: str
    allow_other_base: bool
    source: DataSource
    data: DataConfig
    captions: CaptionConfig
    buckets: BucketConfig
    output: OutputConfig
    optim: OptimConfig
    precision: PrecisionConfig
    validation: ValidationConfig
    preserve: PreserveConfig
    adapter: Any

    @classmethod
    def from_args(cls, args: argparse.Namespace, kind: str) -> TrainingConfig:
        """The configuration of a parsed training script; ValueError names the first bad flag."""
        adapter_kind = get_kind(kind)
        return cls(
            kind=kind,
            model_path=str(args.model_path),
            allow_other_base=args.allow_other_base,
            source=_from_args(DataSource, args),
            data=_from_args(DataConfig, args),
            captions=_from_args(CaptionConfig, args),
            buckets=_from_args(BucketConfig, args),
            output=_from_args(OutputConfig, args),
            optim=_from_args(OptimConfig, args),
            precision=_from_args(PrecisionConfig, args),
            validation=_from_args(ValidationConfig, args),
            preserve=_from_args(PreserveConfig, args),
            adapter=adapter_kind.options(args),
        )

    @property
    def adapter_kind(self) -> AdapterKind:
        return get_kind(self.kind)

    def flags(self) -> dict[str, Any]:
        """The run's flags as one flat dict (flag name -> value), as adapter files and trackers record them."""
        flat: dict[str, Any] = {"kind": self.kind, "model_path": self.model_path}
        groups = (self.source, self.data, self.captions, self.buckets, self.output, self.optim)
        for group in (*groups, self.precision, self.validation, self.preserve):
            flat.update(asdict(group))
        flat.update(asdict(self.adapter))
        return flat
