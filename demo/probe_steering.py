"""How far can each write-up adapter steer the frozen toy encoder? A probe diagnostic, no UNet (~3 min).

A linear probe learns to read shape colour, background colour and shape from the encoder's plain-word
captions; then the MLP and the prompt adapter are each trained, through that frozen probe, to make it read
a domain caption's attributes, and scored on held-out domain prompts. That is the easiest target an adapter
could have: what it cannot express to a linear probe, it cannot make the UNet draw. The README's Results
quote this script's table to explain where the prompt adapter stops.

Example: python demo/probe_steering.py --model_path demo/toy_base
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

import torch

from altadapter.cli_args import setup_logging
from altadapter.model import load_base
from altadapter.rendering.report import markdown_row
from toyworld.text_phase_probe import score_cells, steer_every_adapter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model_path", default="demo/toy_base", help="the toy base model folder")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each adapter")
    parser.add_argument("--num_layers", type=int, default=2, help="MLP adapter layers (the demo's)")
    parser.add_argument("--num_prompts", type=int, default=16, help="prompt vectors (the demo's)")
    parser.add_argument(
        "--learning_rates",
        type=float,
        nargs="+",
        default=[3e-3, 3e-2, 3e-1],
        help="each adapter is trained once at each of these",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of captions, init and batches")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Fit the probe, steer each adapter at each learning rate, print the table."""
    setup_logging()
    torch.manual_seed(args.seed)
    base = load_base(args.model_path)
    print(f"held-out long domain prompts, {args.steps} steps per adapter (chance: all three 1.1%):\n")
    print(markdown_row(["adapter", "learning rate", "shape colour", "background", "shape", "all three"]))
    print(markdown_row(["---", "---:", "---:", "---:", "---:", "---:"]))
    for learning_rate in args.learning_rates:
        scores = steer_every_adapter(
            base,
            num_prompts=args.num_prompts,
            steps=args.steps,
            learning_rate=learning_rate,
            seed=args.seed,
            num_layers=args.num_layers,
        )
        plain = scores.pop("plain probe")
        for kind, kind_scores in scores.items():
            print(markdown_row([kind, f"{learning_rate:g}", *score_cells(kind_scores)]), flush=True)
    print(f"\nthe probe on the plain captions it was fitted to: all three right {100 * plain['all']:.1f}%")


if __name__ == "__main__":
    main(parse_args())
