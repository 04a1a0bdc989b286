"""Flags of the training scripts, with diffusers' training-example names where one exists.

Every script calls `add_train_args`; each adds only its adapter's flags: the write-up's two scripts one
kind each, `train_adapter.py` the kind `--kind` names (`parse_kind_args`). `check_train_args` rejects a
bad configuration before any model is loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from altadapter.cli_args import add_model_args, add_verbose_arg
from altadapter.data.images import check_resolution
from altadapter.lora_adapter import TARGETS


def add_train_args(
    parser: argparse.ArgumentParser, *, default_name: str | None, default_learning_rate: float | None
) -> None:
    """Data, optimisation, precision, checkpointing, validation and preservation flags."""
    add_model_args(parser)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data_dir",
        "--train_data_dir",
        required=True,
        help="dataset folder from meta_file_converter.py (metadata.jsonl), or a folder of images + tag .txt",
    )
    data.add_argument("--resolution", type=int, default=512, help="training size in pixels (multiple of 8)")
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
    add_verbose_arg(parser)


def add_mlp_args(parser: argparse.ArgumentParser) -> None:
    """The MLP adapter's own flags."""
    group = parser.add_argument_group("MLP adapter")
    group.add_argument(
        "--num_layers",
        type=int,
        default=1,
        help="Linear layers after the text encoder (1 = one 768x768 Linear on m9, 590,592 parameters)",
    )


def add_prompt_args(parser: argparse.ArgumentParser) -> None:
    """The prompt adapter's own flags."""
    group = parser.add_argument_group("prompt adapter")
    group.add_argument(
        "--num_prompts",
        type=int,
        default=100,
        help="learned vectors placed after <s> (100 x 1024 = 102,400 parameters on m9)",
    )
    group.add_argument(
        "--init_text",
        default=None,
        help="initialise the vectors from this text's word embeddings (default: the dataset's most "
        "frequent tags)",
    )
    group.add_argument(
        "--random_init", action="store_true", help="initialise the vectors randomly instead of from text"
    )


def add_vocab_args(parser: argparse.ArgumentParser) -> None:
    """The vocab adapter's own flags."""
    group = parser.add_argument_group("vocab adapter")
    group.add_argument(
        "--num_tags",
        type=int,
        default=32,
        help="learn a new token for each of the dataset's N most frequent tags (32 x 1024 = 32,768 "
        "parameters on m9)",
    )
    group.add_argument(
        "--tags",
        default=None,
        help="file of the tags to learn instead (one per line or comma-separated, UTF-8)",
    )
    group.add_argument(
        "--vectors_per_tag", type=int, default=1, help="learned input vectors that stand for each tag"
    )
    group.add_argument(
        "--init_text",
        default=None,
        help="initialise every tag's vectors from this text's word embeddings (default: each tag's pieces)",
    )


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    """The LoRA adapter's own flags."""
    group = parser.add_argument_group("LoRA adapter")
    group.add_argument(
        "--rank",
        type=int,
        default=4,
        help="LoRA rank (rank 4 on query, key, value, out: 786,432 parameters on m9)",
    )
    group.add_argument(
        "--lora_alpha",
        type=float,
        default=None,
        help="LoRA alpha: the update is scaled by alpha / rank; unset (%(default)s): the rank, a scale of 1",
    )
    group.add_argument(
        "--lora_targets",
        nargs="+",
        choices=list(TARGETS),
        default=list(TARGETS),
        help="attention projections of every encoder layer to adapt (out: the attention output dense)",
    )


# Per kind: the run name (the write-up's for its two), a learning rate that suits the adapter's
# parameters, and the adapter's own flags.
KIND_DEFAULTS = {
    "mlp": {"name": "altm9-single-layer", "learning_rate": 1e-4, "add_args": add_mlp_args},
    "prompt": {"name": "altm9-prompt-embedding", "learning_rate": 1e-3, "add_args": add_prompt_args},
    "vocab": {"name": "altm9-vocab", "learning_rate": 1e-3, "add_args": add_vocab_args},
    "lora": {"name": "altm9-lora", "learning_rate": 1e-4, "add_args": add_lora_args},
}


def build_parser(kind: str | None, description: str, *, kind_flag: bool = False) -> argparse.ArgumentParser:
    """The whole flag set of one training script: shared flags, the adapter's own, and --kind if asked.

    kind None (train_adapter.py before --kind is known): the shared flags only, --kind required.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    if kind_flag:
        add_kind_arg(parser, required=True)
    defaults = KIND_DEFAULTS[kind] if kind else {}
    add_train_args(
        parser, default_name=defaults.get("name"), default_learning_rate=defaults.get("learning_rate")
    )
    if kind:
        defaults["add_args"](parser)
    return parser


def add_kind_arg(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """--kind: which adapter train_adapter.py trains."""
    parser.add_argument(
        "--kind",
        choices=list(KIND_DEFAULTS),
        required=required,
        help="adapter kind: mlp (after the encoder), prompt (vectors before it), vocab (a new token per "
        "domain tag), lora (low-rank updates of its attention); its own flags: --kind KIND --help",
    )


def kind_flags(kind: str) -> set[str]:
    """The flags only adapters of `kind` take."""
    parser = argparse.ArgumentParser(add_help=False)
    KIND_DEFAULTS[kind]["add_args"](parser)
    return {option for action in parser._actions for option in action.option_strings}


def parse_kind_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """Flags of train_adapter.py: the shared ones, --kind, and that kind's own; another kind's are refused."""
    probe = argparse.ArgumentParser(add_help=False)
    add_kind_arg(probe, required=False)
    kind = probe.parse_known_args(argv)[0].kind
    if kind is None:  # no --kind yet: a parser that requires it, whose --help lists every kind's flags
        epilog = "flags of each kind: " + "; ".join(
            f"{name}: {' '.join(sorted(kind_flags(name)))}" for name in KIND_DEFAULTS
        )
        parser = build_parser(None, description, kind_flag=True)
        parser.epilog = epilog + ". The defaults of --name and --learning_rate are per kind."
        return parser.parse_args(argv)
    parser = build_parser(kind, description, kind_flag=True)
    args, unknown = parser.parse_known_args(argv)
    for flag in unknown:
        owners = [name for name in KIND_DEFAULTS if flag.split("=")[0] in kind_flags(name)]
        if owners:
            parser.error(
                f"{flag.split('=')[0]} is a flag of --kind {' / '.join(owners)}, not of --kind {kind}"
            )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def check_train_args(args: argparse.Namespace) -> None:
    """Raise ValueError for a configuration that cannot work, before anything heavy is loaded."""
    check_resolution(args.resolution, "--resolution")
    if not Path(args.data_dir).is_dir():
        raise ValueError(f"--data_dir {args.data_dir}: no such folder; run meta_file_converter.py first")
    if args.validation_dir is not None and not Path(args.validation_dir).is_dir():
        raise ValueError(f"--validation_dir {args.validation_dir}: no such folder")
    if not 0.0 <= args.validation_split < 1.0:
        raise ValueError(f"--validation_split {args.validation_split}: must be in [0, 1)")
    # The kind-specific flags exist only on their kind's parser, hence getattr with a passing default.
    for flag in (
        "batch_size",
        "max_train_steps",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "num_tags",
        "vectors_per_tag",
        "rank",
    ):
        if getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("validation_prompts", "preserve_prompts", "tags"):
        if getattr(args, flag, None) is not None and not Path(getattr(args, flag)).is_file():
            raise ValueError(f"--{flag} {getattr(args, flag)}: no such file")
    if getattr(args, "random_init", False) and args.init_text:
        raise ValueError("--random_init and --init_text contradict each other; pass one")
    if getattr(args, "lora_alpha", None) is not None and not args.lora_alpha > 0:
        raise ValueError(f"--lora_alpha must be positive, got {args.lora_alpha}")
    if len(set(getattr(args, "lora_targets", ()))) != len(getattr(args, "lora_targets", ())):
        raise ValueError(f"--lora_targets names a projection twice: {' '.join(args.lora_targets)}")
