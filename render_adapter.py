"""Render prompts with an adapter of any kind and with the original model, from the same noise, side by side.

The adapter file says its kind (vocab, lora, mlp or prompt). Writes per prompt the tuned and original
grids under the write-up's names (grid_{i}_with_samples_{n}_with_steps_{s}.png and ..._original.png), a
labelled side-by-side image, render.json and report.md into --output_dir (default images/KIND).

Example:
  python render_adapter.py --model_path BAAI/AltDiffusion-m9
    --adapter OUT/altm9-vocab/altm9-vocab.safetensors --prompts prompts.txt --output_dir images/vocab
"""

from __future__ import annotations

import argparse

from altadapter.rendering import args as render_args
from altadapter.rendering import cli as render_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    return render_args.build_parser(None, __doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Load the base and the adapter, render, write images and the report."""
    render_cli.run(args, None)


if __name__ == "__main__":
    main(parse_args())
