"""Which text phase makes the toy encoder steerable by prompt vectors? Train one encoder, probe it (minutes).

Trains a fresh toy text encoder with the base trainer's text phase (`--masked_lm_weight` adds masked-language
modelling; the size flags make it wider, deeper or longer), then runs the steering probe of
demo/probe_steering.py on it: the MLP and the shallow, reparameterised and deep prompt adapters, each
trained through a frozen linear probe and scored on 90 held-out long domain prompts. One line of JSON per
run is appended to --results; docs/steering_research.md tabulates them. No UNet is trained: this is the
cheap measurement that decides whether a toy-base rebuild is worth its hour.

Example: OMP_NUM_THREADS=1 python demo/probe_text_phase.py --masked_lm_weight 1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

import torch

from altadapter.cli_args import setup_logging
from altadapter.model import load_base
from altadapter.rendering.report import markdown_row
from toyworld.base_config import TOY_SIZE, ToyBaseConfig
from toyworld.text_phase_probe import (
    TABLE_HEADER,
    results_table,
    score_cells,
    steer_every_adapter,
    train_probe_model,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the encoder, its data and the probe")
    parser.add_argument("--masked_lm_weight", type=float, default=0.0, help="0: the committed base's recipe")
    parser.add_argument("--text_steps", type=int, default=ToyBaseConfig.text_steps, help="text-phase steps")
    parser.add_argument("--hidden_size", type=int, default=TOY_SIZE.hidden_size, help="encoder width")
    parser.add_argument("--num_layers", type=int, default=TOY_SIZE.num_hidden_layers, help="encoder layers")
    parser.add_argument("--num_heads", type=int, default=TOY_SIZE.num_attention_heads, help="attention heads")
    parser.add_argument(
        "--positions",
        type=int,
        default=TOY_SIZE.model_max_length,
        help="token positions (prompt vectors included)",
    )
    parser.add_argument("--num_prompts", type=int, default=16, help="prompt vectors (the demo's)")
    parser.add_argument("--steering_steps", type=int, default=1000, help="training steps of each adapter")
    parser.add_argument("--learning_rate", type=float, default=3e-2, help="of every adapter")
    parser.add_argument(
        "--results", default="docs/steering_research_results.jsonl", help="JSON lines to append"
    )
    parser.add_argument(
        "--table", action="store_true", help="train nothing: print --results as a markdown table and exit"
    )
    parser.add_argument("--keep_model", default="", help="a folder to keep the model in (else a temp dir)")
    return parser.parse_args(argv)


def probe_config(args: argparse.Namespace) -> ToyBaseConfig:
    """The text phase to train: the base trainer's defaults with the flags' objective and size."""
    size = replace(
        TOY_SIZE,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=4 * args.hidden_size,
        model_max_length=args.positions,
    )
    # No time cap: the step count ends the phase, so runs on a busy machine train as far as idle ones.
    return ToyBaseConfig(
        seed=args.seed,
        size=size,
        text_steps=args.text_steps,
        masked_lm_weight=args.masked_lm_weight,
        time_budget_s=1e9,
    )


def print_table(results: str) -> None:
    """Every run recorded in `results`, one markdown row each (all three right, held-out long prompts)."""
    with open(results, encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    print(markdown_row(TABLE_HEADER))
    print(markdown_row(["---"] * 4 + ["---:"] * (len(TABLE_HEADER) - 4)))
    for row in results_table(records):
        print(markdown_row(row))


def main(args: argparse.Namespace) -> None:
    """Train the encoder, steer every adapter through it, print one row and append it to --results."""
    if args.table:
        print_table(args.results)
        return
    setup_logging()
    started = time.perf_counter()
    config = probe_config(args)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep_model or scratch)
        text_report = train_probe_model(config, folder)
        scores = steer_every_adapter(
            load_base(folder),
            num_prompts=args.num_prompts,
            steps=args.steering_steps,
            learning_rate=args.learning_rate,
            seed=args.seed,
        )
    record = {
        "flags": vars(args),
        "size": asdict(config.size),
        "text_phase": {key: text_report[key] for key in ("steps", "seconds", "probe_accuracy", "spread")},
        "scores": scores,
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    with open(args.results, "a", encoding="utf-8") as results:
        results.write(json.dumps(record) + "\n")
    print(markdown_row(["adapter", "shape colour", "background", "shape", "all three"]))
    print(markdown_row(["---", "---:", "---:", "---:", "---:"]))
    for kind, kind_scores in scores.items():
        print(markdown_row([kind, *score_cells(kind_scores)]))


if __name__ == "__main__":
    main(parse_args())
