"""Train the demo's toy AltDiffusion base from scratch on the toy world, save it, and check what it draws.

The toy world is coloured shapes on coloured backgrounds described in plain words ("a red circle on a blue
background"); see altadapter/toy_world.py. First a VAE, then text encoder + UNet together (epsilon
prediction, m9's DDPM schedule, 10% empty captions). The model is saved in the AltDiffusion folder layout
with fp16 weights, reloaded with load_base, sampled with the stock pipeline (DDIM) on --eval_prompts
base-world prompts, and the pictures are read by the toy world's classifier. Progress goes to stderr; the
model folder gets training_report.json (steps, losses, timings, accuracies) and samples.png.

Training stops at --unet_steps or --time_budget_s, whichever comes first; the learning rate follows
whichever is nearer its end. The defaults fit one H100 (about four minutes in all, bf16 autocast). On a
CPU (slowly; OMP_NUM_THREADS=1 when other jobs share its cores), for example:
python demo/train_toy_base.py --device cpu --batch_size 32 --pool_size 20000 --time_budget_s 3600.
--eval_only scores a saved model again, on any device, and updates its report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

from altadapter.cli_args import setup_logging
from altadapter.toy_training import REPORT_FILE, ToyBaseConfig, reevaluate_toy_base, train_toy_base

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
        help="seconds for both training phases together; rendering, saving and evaluation come on top",
    )
    parser.add_argument(
        "--vae_share",
        type=float,
        default=DEFAULTS.vae_share,
        help="the most of --time_budget_s the VAE may take (it stops earlier at --vae_steps)",
    )
    parser.add_argument("--vae_steps", type=int, default=DEFAULTS.vae_steps, help="most VAE training steps")
    parser.add_argument(
        "--unet_steps", type=int, default=DEFAULTS.unet_steps, help="most text encoder + UNet training steps"
    )
    parser.add_argument(
        "--batch_size", type=int, default=DEFAULTS.batch_size, help="text encoder + UNet batch size"
    )
    parser.add_argument("--vae_batch_size", type=int, default=DEFAULTS.vae_batch_size, help="VAE batch size")
    parser.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help="peak learning rate of text encoder + UNet"
    )
    parser.add_argument(
        "--pool_size", type=int, default=DEFAULTS.pool_size, help="scenes rendered and VAE-encoded up front"
    )
    parser.add_argument(
        "--eval_prompts",
        type=int,
        default=DEFAULTS.eval_prompts,
        help="base-world prompts rendered at the end",
    )
    parser.add_argument(
        "--eval_steps", type=int, default=DEFAULTS.eval_steps, help="DDIM steps per evaluation picture"
    )
    parser.add_argument(
        "--guidance_scale", type=float, default=DEFAULTS.guidance_scale, help="classifier-free guidance scale"
    )
    parser.add_argument(
        "--round_trip_scenes",
        type=int,
        default=DEFAULTS.round_trip_scenes,
        help="fresh scenes encoded and decoded by the saved VAE, for its MSE and attribute accuracy",
    )
    parser.add_argument(
        "--log_every", type=int, default=DEFAULTS.log_every, help="steps between progress lines"
    )
    parser.add_argument(
        "--eval_only",
        action="store_true",
        help="train nothing: evaluate the model already in --output_dir again and update its report",
    )
    parser.add_argument("--verbose", action="store_true", help="show diffusers/transformers INFO logs too")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Train, save, evaluate; print the accuracy on base-world prompts."""
    setup_logging(args.verbose)
    try:
        config = ToyBaseConfig(
            seed=args.seed,
            time_budget_s=args.time_budget_s,
            vae_share=args.vae_share,
            vae_steps=args.vae_steps,
            unet_steps=args.unet_steps,
            batch_size=args.batch_size,
            vae_batch_size=args.vae_batch_size,
            lr=args.lr,
            pool_size=args.pool_size,
            eval_prompts=args.eval_prompts,
            eval_steps=args.eval_steps,
            guidance_scale=args.guidance_scale,
            round_trip_scenes=args.round_trip_scenes,
            log_every=args.log_every,
            device=args.device,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if args.eval_only:
        report = reevaluate_toy_base(args.output_dir, config)
    else:
        report = train_toy_base(config, args.output_dir)
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
        "seconds_total": report.get("seconds_total"),
    }
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.output_dir) / REPORT_FILE}")


if __name__ == "__main__":
    main(parse_args())
