"""Run the write-up's whole workflow on the toy domain and measure what the adapters learned and kept.

Writes the toy domain (demo/make_toy_domain.py), converts it (meta_file_converter.py), samples the grid
prompts (prompts_generator.py), trains every adapter kind on the toy base (mlp, prompt, vocab, lora, each
through its own script; mlp, prompt and lora again with --preserve_weight; the MLP again with tag dropout
and again with centre crops instead of buckets), renders the write-up's grids into IMAGES_DIR/KIND
(IMAGES_DIR/prompt/report.md holds the write-up's full table), then scores the original model and every
adapter: held-out denoising loss, and the attribute accuracy of pictures rendered from domain prompts
(short, long, and long at a wide size) and base-world prompts, read by a transparent colour/shape classifier.
Every command is printed as it runs; its output goes to WORK_DIR/logs/. The results table is printed and
written to WORK_DIR/results.md and WORK_DIR/results.json.

The defaults fit 15 minutes on 2 CPU cores; --smoke runs every stage at tiny sizes in seconds (the test).
--models trains and scores only some runs, for a sweep of one of them.
Example: python demo/run_demo.py --model_path demo/toy_base
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

from altadapter.cli_args import setup_logging
from toyworld.commands import DemoError
from toyworld.demo import run_demo
from toyworld.demo_config import ADAPTER_MODELS, SMOKE, DemoConfig
from toyworld.results import format_results

FULL = DemoConfig()

# Flags whose default depends on --smoke: (type, help). Left unset, they take the full or the smoke value.
SIZES = {
    "num_train": (int, "training images of the toy domain"),
    "num_heldout": (int, "held-out domain images, the training scripts' --validation_dir"),
    "grid_prompts": (int, "prompts_generator.py prompts rendered into the write-up's grids"),
    "grid_images": (int, "pictures per grid prompt (the write-up's 4)"),
    "grid_steps": (int, "DDIM steps of the grids"),
    "max_train_steps": (int, "training steps of each adapter run"),
    "batch_size": (int, "training batch size"),
    "num_prompts": (int, "prompt adapter vectors (the write-up's 100)"),
    "preserve_prompts": (int, "base-world prompts of the preservation penalty"),
    "eval_prompts": (int, "prompts per evaluation set (domain short, domain long, base world, wide)"),
    "eval_steps": (int, "DDIM steps of the evaluation pictures"),
    "eval_width": (int, "width of the evaluation pictures but the wide set's (unset: the base's own)"),
    "eval_height": (int, "height of the evaluation pictures but the wide set's (unset: the base's own)"),
    "loss_images": (int, "held-out pictures of each evaluation loss (base world; domain, 2:1 and 1:2)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model_path", default=FULL.model_path, help="the toy base model folder")
    parser.add_argument(
        "--work_dir", default=FULL.work_dir, help="folder for data, adapters, logs and results"
    )
    parser.add_argument(
        "--images_dir", default=FULL.images_dir, help="the grids go into IMAGES_DIR/mlp and IMAGES_DIR/prompt"
    )
    parser.add_argument("--seed", type=int, default=FULL.seed, help="seed of data, training and sampling")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and a few steps: every stage and file, no learning"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=ADAPTER_MODELS,
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="train, render and score only these adapter runs, of: "
        + ", ".join(ADAPTER_MODELS)
        + " (the original is always scored; the grids of mlp and prompt, or vocab and lora, only with both). For a sweep, e.g. "
        "--models mlp_tag_dropout --mlp_tag_dropout_rate 0.1 --work_dir demo_out/sweep-0.1 --images_dir "
        "demo_out/sweep-0.1/images (the default IMAGES_DIR holds the committed sample sheets). results.md "
        "then holds only these rows; the README's tables come from the full run (default: all)",
    )
    sizes = parser.add_argument_group("sizes (unset: the full value, or the smoke value with --smoke)")
    for name, (kind, text) in SIZES.items():
        full, smoke = getattr(FULL, name), SMOKE.get(name, getattr(FULL, name))
        sizes.add_argument(
            f"--{name}",
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {full}; --smoke: {smoke})",
        )
    tuning = parser.add_argument_group("training and sampling")
    for kind in ("mlp", "prompt", "vocab", "lora"):
        name = f"{kind}_learning_rate"
        tuning.add_argument(
            f"--{name}", type=float, default=getattr(FULL, name), help=f"{kind} adapter learning rate"
        )
    tuning.add_argument("--num_layers", type=int, default=FULL.num_layers, help="MLP adapter layers")
    tuning.add_argument(
        "--num_tags",
        type=int,
        default=FULL.num_tags,
        help="vocab adapter: the dataset's N most frequent tags",
    )
    tuning.add_argument("--rank", type=int, default=FULL.rank, help="LoRA rank")
    tuning.add_argument(
        "--nonsquare_share",
        type=float,
        default=FULL.nonsquare_share,
        help="share of the toy domain's pictures drawn 2:1 or 1:2 (0: all square)",
    )
    tuning.add_argument(
        "--enable_bucket",
        action=argparse.BooleanOptionalAction,
        default=FULL.enable_bucket,
        help="train every adapter with aspect-ratio buckets (--no-enable_bucket: square crops)",
    )
    tuning.add_argument(
        "--mlp_tag_dropout_rate",
        type=float,
        default=FULL.mlp_tag_dropout_rate,
        help="--caption_tag_dropout_rate of the mlp_tag_dropout run (the other MLP runs have none)",
    )
    tuning.add_argument(
        "--preserve_weight",
        type=float,
        default=FULL.preserve_weight,
        help="--preserve_weight of the two preserving runs",
    )
    tuning.add_argument(
        "--eval_images", type=int, default=FULL.eval_images, help="pictures per evaluation prompt and model"
    )
    for side in ("width", "height"):
        tuning.add_argument(
            f"--wide_{side}",
            type=int,
            default=getattr(FULL, f"wide_{side}"),
            help=f"{side} of the wide set's pictures (the long domain prompts again; a multiple of 8)",
        )
    tuning.add_argument(
        "--guidance_scale",
        type=float,
        default=FULL.guidance_scale,
        help="classifier-free guidance of every picture (the toy base's own)",
    )
    parser.add_argument(
        "--jobs", type=int, default=FULL.jobs, help="independent commands run side by side, one thread each"
    )
    parser.add_argument(
        "--device",
        default=FULL.device,
        help="torch device of the evaluation (cpu, cuda, ...); the scripts pick theirs (a GPU if there is one)",
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The run's configuration: the flags given, else the smoke or full sizes (ValueError if invalid)."""
    given = {key: value for key, value in vars(args).items() if key not in ("smoke", "models")}
    # --models in table order, each once, whatever order the command line gives them in.
    models = tuple(name for name in ADAPTER_MODELS if name in getattr(args, "models", ADAPTER_MODELS))
    return DemoConfig(**{**(SMOKE if args.smoke else {}), **given, "models": models})


def main(args: argparse.Namespace) -> None:
    """Build the configuration, run the demo, print the results table."""
    setup_logging()
    try:
        config = config_from_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    command = shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith("run_demo.py") else ""
    try:
        results = run_demo(config, command=command)
    except DemoError as error:
        sys.exit(f"error: {error}")
    print()
    print(format_results(results))


if __name__ == "__main__":
    main(parse_args())
