"""Render prompts with an MLP adapter and with the original model, from the same noise, side by side.

Writes per prompt the tuned and original grids under the write-up's names
(grid_{i}_with_samples_{n}_with_steps_{s}.png and ..._original.png), a labelled side-by-side image,
render.json and report.md into --output_dir. text_encoder_gen_show.py does the same for a prompt adapter.

Example:
  python text_encoder_gen_show_mlp.py --model_path BAAI/AltDiffusion-m9
    --adapter OUT/altm9-single-layer.safetensors --prompts prompts.txt --output_dir images/mlp
    --compare_with images/prompt
"""

from __future__ import annotations

import argparse

from altadapter.rendering import args as render_args
from altadapter.rendering import cli as render_cli

KIND = "mlp"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    return render_args.build_parser(KIND, __doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Load the base and the adapter, render, write images and the report."""
    render_cli.run(args, KIND)


if __name__ == "__main__":
    main(parse_args())
