"""Write the demo's toy domain: tagged images in the write-up's format, plus evaluation prompt lists.

The domain draws the toy base's own world (coloured shapes on coloured backgrounds) but names it with words
the base never saw: Arknights names, each fixing one attribute (exusiai: a red shape, iberia: a blue
background, originium: a triangle, ...), among filler tags with no visual meaning (long hair), after the
prefix "1girl, solo"; see DOMAIN_TAGS in altadapter/world.py.

Writes into --output_dir: train/ and heldout/ (NNNNN.png + NNNNN.txt with comma-separated tags, and
attributes.json; --nonsquare_share of the pictures 2:1 or 1:2); domain_prompts_short.txt (4 tags after
the prefix, the write-up's short prompts); domain_prompts_long.txt (as many tags as the training
captions); base_prompts.txt (plain-word prompts of the base world, out of the domain); prompts.json (the
attributes a picture of each prompt should show).

Example: python demo/make_toy_domain.py --output_dir demo/toy_domain, then
python meta_file_converter.py --image_dir demo/toy_domain/train --output_dir DATASET
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without installing

from toyworld import captions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--output_dir", default="demo/toy_domain", help="folder to write")
    parser.add_argument(
        "--num_train", type=int, default=1800, help="training images, 20 per attribute combination"
    )
    parser.add_argument("--num_heldout", type=int, default=180, help="held-out images")
    parser.add_argument("--num_prompts", type=int, default=90, help="prompts in each prompt list")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (a rectangle's shorter)")
    parser.add_argument(
        "--nonsquare_share",
        type=float,
        default=0.0,
        help="share of the pictures drawn 2:1 or 1:2 (for aspect-ratio buckets); 0 keeps them all square",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of images, captions and prompts")
    args = parser.parse_args(argv)
    for name in ("num_train", "num_heldout", "num_prompts", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 <= args.nonsquare_share <= 1:
        parser.error("--nonsquare_share must be in [0, 1]")
    return args


def main(args: argparse.Namespace) -> None:
    """Write the dataset and the prompt lists; print where."""
    folders = captions.make_domain_dataset(
        args.output_dir,
        args.num_train,
        args.num_heldout,
        args.seed,
        size=args.size,
        nonsquare_share=args.nonsquare_share,
    )
    prompt_files = captions.write_prompt_lists(args.output_dir, args.num_prompts, seed=args.seed + 100)
    print(f"wrote {args.num_train} training images to {folders['train']}")
    print(f"wrote {args.num_heldout} held-out images to {folders['heldout']}")
    for path in prompt_files.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main(parse_args())
