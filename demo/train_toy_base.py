"""Train the demo's toy AltDiffusion base from scratch on the toy world, save it, and check what it draws.

The toy world is coloured shapes on coloured backgrounds described in plain words ("a red circle on a blue
background"); see demo/toyworld/. Three phases: a VAE; the text encoder, taught the world's words and then
frozen (as AltDiffusion's encoder was trained before its UNet); the UNet on the encoder's cached outputs
(epsilon prediction, m9's DDPM schedule, 10% empty captions). The model is saved in the AltDiffusion folder
layout with fp16 weights, reloaded with load_base, sampled with the stock pipeline (DDIM) on every base-world
caption template for every attribute combination, and the pictures are read by the toy world's classifier.
Progress (loss, steps/s, time left, conditioning signals) goes to stderr; the model folder gets
training_report.json (the command, steps, curves, accuracies per template) and samples.png.

The defaults train on 2 CPU cores (OMP_NUM_THREADS=2) within --time_budget_s, about 40 minutes in all;
a GPU (--device auto finds one) takes a few. --eval_only scores a saved model again and updates its report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

from altadapter.cli_args import add_verbose_arg, setup_logging, user_errors
from toyworld.base_config import REPORT_FILE, ToyBaseConfig
from toyworld.base_eval import reevaluate_toy_base
from toyworld.base_training import train_toy_base

DEFAULTS = ToyBaseConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--output_dir", default="demo/toy_base", help="model folder to write")
    parser.add_argument(
        "--device", default=DEFAULTS.device, help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of weights, data and sampling")
    parser.add_argument(
        "--time_budget_s",
        type=float,
        default=DEFAULTS.time_budget_s,
        help="seconds for the three training phases together; the UNet gets what the others leave",
    )
    for name, help_text in (
        ("vae_steps", "most VAE steps (or 30%% of the budget)"),
        ("text_steps", "most text-encoder steps (or 10%% of the budget)"),
        (
            "unet_steps",
            "most UNet steps; the learning rate follows steps or seconds, whichever runs out first",
        ),
        ("batch_size", "UNet batch size"),
        ("vae_batch_size", "VAE batch size"),
        ("text_batch_size", "text-encoder batch size"),
        ("pool_size", "scenes rendered and VAE-encoded up front"),
        ("eval_combos", "attribute combinations rendered with every caption template at the end (90 = all)"),
        ("eval_steps", "DDIM steps per evaluation picture"),
        ("round_trip_scenes", "fresh scenes encoded and decoded by the saved VAE"),
        ("log_every", "steps between progress lines"),
    ):
        parser.add_argument(f"--{name}", type=int, default=getattr(DEFAULTS, name), help=help_text)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate of the UNet")
    parser.add_argument(
        "--masked_lm_weight",
        type=float,
        default=DEFAULTS.masked_lm_weight,
        help="masked-language modelling beside the probe in the text phase (0: off, the committed base)",
    )
    parser.add_argument(
        "--guidance_scale", type=float, default=DEFAULTS.guidance_scale, help="classifier-free guidance scale"
    )
    parser.add_argument(
        "--vae_from",
        default=DEFAULTS.vae_from,
        help="reuse the VAE of this toy base folder instead of training one",
    )
    parser.add_argument(
        "--eval_only",
        action="store_true",
        help="train nothing: evaluate the model already in --output_dir again and update its report",
    )
    add_verbose_arg(parser)
    return parser.parse_args(argv)


CONFIG_FLAGS = (
    "seed",
    "time_budget_s",
    "vae_steps",
    "text_steps",
    "unet_steps",
    "batch_size",
    "vae_batch_size",
    "text_batch_size",
    "pool_size",
    "eval_combos",
    "eval_steps",
    "round_trip_scenes",
    "log_every",
    "lr",
    "masked_lm_weight",
    "guidance_scale",
    "vae_from",
    "device",
)


def main(args: argparse.Namespace) -> None:
    """Train, save, evaluate; print the accuracy on base-world prompts."""
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        config = ToyBaseConfig(**{name: getattr(args, name) for name in CONFIG_FLAGS})
    if args.eval_only:
        report = reevaluate_toy_base(args.output_dir, config)
    else:
        report = train_toy_base(config, args.output_dir, command=shlex.join(["python", *sys.argv]))
    accuracy = report["base_world_accuracy"]
    summary = {
        "output_dir": str(Path(args.output_dir)),
        "trained_on": report.get("device_name"),
        "vae_steps": report.get("vae", {}).get("steps"),
        "unet_steps": report.get("unet", {}).get("steps"),
        "final_loss": report.get("unet", {}).get("final_loss"),
        "vae_round_trip_mse": round(report["vae_round_trip"]["mse"], 4),
        "accuracy": {name: round(accuracy[name], 3) for name in ("fg", "bg", "shape", "all")},
        "chance": {name: round(value, 3) for name, value in accuracy["chance"].items()},
        "all_three_per_template": {t: round(v["all"], 3) for t, v in report["per_template"].items()},
        "seconds_total": report.get("seconds_total"),
    }
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.output_dir) / REPORT_FILE}")


if __name__ == "__main__":
    main(parse_args())
