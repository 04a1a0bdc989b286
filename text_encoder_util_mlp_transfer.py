"""Train the MLP adapter: Linear layer(s) over the frozen AltDiffusion text encoder's output.

Only the adapter trains (590,592 parameters for one layer on m9); the base never changes. The encoder's
outputs are cached per caption, so a step costs one UNet forward and backward. Runs under
`python`, `accelerate launch` and `torchrun` alike; writes CKPT_DIR/NAME/NAME.safetensors.
"""

from __future__ import annotations

import argparse

from altadapter.cli_args import setup_logging, user_errors
from altadapter.training.args import build_parser
from altadapter.training.config import TrainingConfig
from altadapter.training.loop import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser("mlp", __doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        train(TrainingConfig.from_args(args, "mlp"))


if __name__ == "__main__":
    main(parse_args())
