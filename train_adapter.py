"""Train any adapter kind on a frozen AltDiffusion base: --kind vocab, lora, mlp or prompt.

vocab: textual inversion for XLM-R, a new token of learned input vectors for each of the domain's tags
(--num_tags most frequent, or --tags FILE); every other word and the encoder stay as they are.
lora: low-rank updates of the text encoder's attention projections (--rank, --lora_alpha, --lora_targets),
what kohya users train with --network_train_text_encoder_only. mlp and prompt: the write-up's two
adapters, as text_encoder_util_mlp_transfer.py and text_encoder_util.py train them. Only the adapter
trains; the base never changes. Runs under `python`, `accelerate launch` and `torchrun` alike; writes
CKPT_DIR/NAME/NAME.safetensors, which render_adapter.py renders.
"""

from __future__ import annotations

import argparse

from altadapter.cli_args import setup_logging, user_errors
from altadapter.training.args import parse_kind_args
from altadapter.training.config import TrainingConfig
from altadapter.training.loop import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_kind_args(argv, __doc__)


def main(args: argparse.Namespace) -> None:
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        train(TrainingConfig.from_args(args, args.kind))


if __name__ == "__main__":
    main(parse_args())
