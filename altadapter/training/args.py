"""Flags of the training scripts, with diffusers' training-example names where one exists.

Every script gets the shared groups and only its adapter kind's own flags: the write-up's two scripts one
kind each (`build_parser`), `train_adapter.py` the kind `--kind` names (`parse_kind_args`), refusing
another kind's flags by name. `training.config.TrainingConfig` turns the parsed flags into a checked config.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from altadapter.adapters import get_kind, kind_names
from altadapter.cli_args import add_model_args, add_verbose_arg
from altadapter.data.sources import add_source_args

# Why the caption flags cost the MLP its caption cache, said in each one's help.
_ON_THE_FLY = "; the MLP's encoder outputs are then computed every step instead of cached"


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The dataset, its resolution and caches, the held-out part."""
    data = parser.add_argument_group("data")
    add_source_args(
        data,
        "dataset folder from meta_file_converter.py (metadata.jsonl), or a folder of images + tag .txt "
        "(kohya's N_concept folders repeat their pictures N times per epoch)",
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="training size in pixels (multiple of 8): square crops, or with --enable_bucket buckets of "
        "about RESOLUTION² pixels",
    )
    data.add_argument(
        "--random_flip", action="store_true", help="flip images horizontally at random (both are cached)"
    )
    data.add_argument(
        "--cache_dir",
        default=None,
        help="keep VAE latents on disk here, keyed by base, resolution, dtype and file content, so "
        "later runs skip encoding (default: in memory only)",
    )
    data.add_argument(
        "--validation_split",
        type=float,
        default=0.0,
        help="fraction of the images held out for the validation loss (0 = none unless --validation_dir)",
    )
    data.add_argument("--validation_dir", default=None, help="a separate held-out dataset folder")


def add_caption_args(parser: argparse.ArgumentParser) -> None:
    """kohya's caption conventions, drawn from each micro-step's seeded generator."""
    tags = parser.add_argument_group("captions (kohya's flags; each step's draws follow --seed)")
    tags.add_argument(
        "--shuffle_caption", action="store_true", help="shuffle a caption's tags every step" + _ON_THE_FLY
    )
    tags.add_argument(
        "--keep_tokens",
        type=int,
        default=0,
        help="keep the first N tags in place: never shuffled or dropped (a trigger word, '1girl, solo')",
    )
    tags.add_argument("--caption_separator", default=",", help="what separates the tags of a caption")
    tags.add_argument(
        "--caption_tag_dropout_rate",
        type=float,
        default=0.0,
        help="drop each tag (but the kept ones) with this probability every step" + _ON_THE_FLY,
    )
    tags.add_argument(
        "--caption_dropout_rate",
        type=float,
        default=0.0,
        help="train on the empty caption instead with this probability" + _ON_THE_FLY,
    )


def add_bucket_args(parser: argparse.ArgumentParser) -> None:
    """kohya's aspect-ratio buckets."""
    buckets = parser.add_argument_group("aspect-ratio buckets (kohya's flags)")
    buckets.add_argument(
        "--enable_bucket",
        action="store_true",
        help="train each picture at the bucket nearest its aspect (about RESOLUTION² pixels, cached once at "
        "that size), every batch from one bucket, instead of a square centre crop",
    )
    buckets.add_argument(
        "--min_bucket_reso", type=int, default=None, help="shortest bucket side (unset: RESOLUTION / 2)"
    )
    buckets.add_argument(
        "--max_bucket_reso", type=int, default=None, help="longest bucket side (unset: 2 x RESOLUTION)"
    )
    buckets.add_argument(
        "--bucket_reso_steps",
        type=int,
        default=None,
        help="bucket sides are multiples of this (unset: RESOLUTION / 8 rounded up to a multiple of 8: "
        "kohya's 256, 1024 and 64 at 512)",
    )


def add_output_args(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    """Where the run writes, checkpoints and resumption, logging."""
    out = parser.add_argument_group("output")
    out.add_argument(
        "--ckpt_dir", "--output_dir", default="runs", help="parent folder; the run writes into CKPT_DIR/NAME/"
    )
    out.add_argument("--name", default=default_name, help="run name: folder and adapter file name")
    out.add_argument(
        "--save_dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="dtype of the final adapter file (fp16/bf16 halve it)",
    )
    out.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="save a resumable checkpoint (adapter, optimizer, lr schedule, step) every N steps",
    )
    out.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="keep only the newest N checkpoints"
    )
    out.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (the newest complete checkpoint in CKPT_DIR/NAME) or a checkpoint folder',
    )
    out.add_argument(
        "--report_to",
        default="tensorboard",
        help='accelerate tracker for the logs ("tensorboard", "wandb", "all" or "none")',
    )


def add_optim_args(parser: argparse.ArgumentParser, default_learning_rate: float | None) -> None:
    """Batches, steps, the learning-rate schedule, the seed and the loss's options."""
    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--batch_size", "--train_batch_size", type=int, default=4, help="images per step per process"
    )
    optim.add_argument("--max_train_steps", type=int, default=1000, help="optimizer steps to train")
    optim.add_argument(
        "--learning_rate", type=float, default=default_learning_rate, help="peak AdamW learning rate"
    )
    optim.add_argument(
        "--lr_scheduler",
        default="constant",
        choices=(
            "constant",
            "constant_with_warmup",
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
        ),
        help="learning-rate schedule (diffusers.optimization.get_scheduler)",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0, help="linear warm-up steps")
    optim.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step"
    )
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0 = off)")
    optim.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay")
    optim.add_argument("--seed", type=int, default=0, help="seed for data order, noise and timesteps")
    optim.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR loss weighting gamma (5.0 is the paper's choice); off by default",
    )
    optim.add_argument("--noise_offset", type=float, default=0.0, help="noise offset (0.05-0.1 typical)")


def add_precision_args(parser: argparse.ArgumentParser) -> None:
    """The frozen base's dtype and the speed options."""
    speed = parser.add_argument_group("precision and speed")
    speed.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="dtype the frozen base runs in (the adapter and its optimizer stay fp32); "
        "default: accelerate's configuration",
    )
    speed.add_argument("--allow_tf32", action="store_true", help="allow TF32 matmuls on Ampere+ GPUs")
    speed.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute UNet activations in the backward pass: less memory, ~30%% slower",
    )
    speed.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="CPU threads of each process's math, fixed for the run and recorded in its checkpoints (a "
        "resumed run is exact only with the same count); unset: the checkpoint's when resuming, else "
        "OMP_NUM_THREADS or torch's default",
    )


def add_validation_args(parser: argparse.ArgumentParser) -> None:
    """Held-out loss and sample renders."""
    check = parser.add_argument_group("validation")
    check.add_argument(
        "--validation_steps",
        type=int,
        default=500,
        help="every N steps: held-out loss (original vs adapter) and, with --validation_prompts, samples",
    )
    check.add_argument(
        "--validation_prompts",
        default=None,
        help="prompts file; every --validation_steps render tuned vs original into CKPT_DIR/NAME/samples/",
    )
    check.add_argument("--num_validation_images", type=int, default=2, help="images per validation prompt")
    check.add_argument(
        "--validation_inference_steps", type=int, default=25, help="sampling steps for validation images"
    )


def add_preserve_args(parser: argparse.ArgumentParser) -> None:
    """The penalty that keeps what the base knew."""
    keep = parser.add_argument_group("preserving the base's knowledge")
    keep.add_argument(
        "--preserve_weight",
        type=float,
        default=0.0,
        help="weight of a penalty keeping the conditioning of general prompts close to the original's",
    )
    keep.add_argument(
        "--preserve_prompts",
        default=None,
        help="file of general prompts for --preserve_weight (default: a built-in list in several languages)",
    )
    keep.add_argument(
        "--preserve_batch_size", type=int, default=4, help="general prompts per step for the penalty"
    )


def build_parser(kind: str | None, description: str, *, kind_flag: bool = False) -> argparse.ArgumentParser:
    """The whole flag set of one training script: shared flags, the adapter's own, and --kind if asked.

    kind None (train_adapter.py before --kind is known): the shared flags only, --kind required.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    if kind_flag:
        add_kind_arg(parser, required=True)
    adapter_kind = get_kind(kind) if kind else None
    add_model_args(parser)
    add_data_args(parser)
    add_caption_args(parser)
    add_bucket_args(parser)
    add_output_args(parser, adapter_kind.default_run_name if adapter_kind else None)
    add_optim_args(parser, adapter_kind.default_learning_rate if adapter_kind else None)
    add_precision_args(parser)
    add_validation_args(parser)
    add_preserve_args(parser)
    add_verbose_arg(parser)
    if adapter_kind:
        adapter_kind.add_flags(parser)
    return parser


def add_kind_arg(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """--kind: which adapter train_adapter.py trains."""
    parser.add_argument(
        "--kind",
        choices=kind_names(),
        required=required,
        help="adapter kind: "
        + ", ".join(f"{name} ({get_kind(name).summary})" for name in kind_names())
        + "; its own flags: --kind KIND --help",
    )


def own_flags(kind: str) -> set[str]:
    """The flags only adapters of `kind` take."""
    parser = argparse.ArgumentParser(add_help=False)
    get_kind(kind).add_flags(parser)
    return {option for action in parser._actions for option in action.option_strings}


def parse_kind_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """Flags of train_adapter.py: the shared ones, --kind, and that kind's own; another kind's are refused."""
    probe = argparse.ArgumentParser(add_help=False)
    add_kind_arg(probe, required=False)
    kind = probe.parse_known_args(argv)[0].kind
    if kind is None:  # no --kind yet: a parser that requires it, whose --help lists every kind's flags
        epilog = "flags of each kind: " + "; ".join(
            f"{name}: {' '.join(sorted(own_flags(name)))}" for name in kind_names()
        )
        parser = build_parser(None, description, kind_flag=True)
        parser.epilog = epilog + ". The defaults of --name and --learning_rate are per kind."
        return parser.parse_args(argv)
    parser = build_parser(kind, description, kind_flag=True)
    args, unknown = parser.parse_known_args(argv)
    for flag in unknown:
        owners = [name for name in kind_names() if flag.split("=")[0] in own_flags(name)]
        if owners:
            parser.error(
                f"{flag.split('=')[0]} is a flag of --kind {' / '.join(owners)}, not of --kind {kind}"
            )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args
