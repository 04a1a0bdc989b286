"""Train the prompt adapter: learned vectors joined to the frozen AltDiffusion text encoder's input.

Only the vectors train (100 x 1024 = 102,400 parameters on m9); the base never changes. They sit after
<s> and pass through every encoder layer. Runs under `python`, `accelerate launch` and `torchrun` alike;
writes CKPT_DIR/NAME/NAME.safetensors.
"""

from __future__ import annotations

import argparse

from altadapter.cli_args import setup_logging, user_errors
from altadapter.training.args import build_parser
from altadapter.training.config import TrainingConfig
from altadapter.training.loop import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser("prompt", __doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        train(TrainingConfig.from_args(args, "prompt"))


if __name__ == "__main__":
    main(parse_args())
