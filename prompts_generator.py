"""Sample evaluation prompts from a dataset's own tags: a domain's words are hard to invent by hand.

Builds the tag vocabulary of --data_dir (a meta_file_converter.py output, or a plain image + tag-file
folder) or of --dataset_name (anything `datasets` loads), prints its statistics, and writes --num_prompts
prompts, one per line, for the rendering scripts.

Examples:
  python prompts_generator.py --data_dir OUTPUT_DIR --num_prompts 10 --prefix "1girl,solo" --out prompts.txt
  python prompts_generator.py --dataset_name PARQUET_DIR --caption_column tags --out prompts.txt
"""

from __future__ import annotations

import argparse
import random

from altadapter.cli_args import add_verbose_arg, user_errors
from altadapter.data.prompts import WEIGHTINGS, TagVocabulary, sample_prompts, write_prompts
from altadapter.data.sources import add_source_args, source_from_args
from altadapter.data.tags import split_tags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_source_args(parser, "dataset folder (metadata.jsonl, or images with tag files)")
    parser.add_argument("--num_prompts", type=int, default=10, help="how many prompts to write")
    parser.add_argument(
        "--out", default="prompts.txt", help="prompts file to write, one prompt per line (UTF-8)"
    )
    parser.add_argument(
        "--min_tags", type=int, default=10, help="fewest sampled tags per prompt (prefix not counted)"
    )
    parser.add_argument(
        "--max_tags", type=int, default=40, help="most sampled tags per prompt (prefix not counted)"
    )
    parser.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="uniform",
        help="uniform: every tag equally likely; frequency: tags drawn in proportion to their caption count",
    )
    parser.add_argument(
        "--prefix",
        default="",
        help="tags that begin every prompt, comma separated (the write-up used '1girl,solo')",
    )
    parser.add_argument(
        "--min_count", type=int, default=1, help="drop tags found in fewer captions than this"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed; the same seed gives the same prompts"
    )
    parser.add_argument("--top_k", type=int, default=20, help="how many of the most common tags to print")
    add_verbose_arg(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Count the tags, print their statistics, sample and write the prompts."""
    # Without --seed, draw one and print it, so a run worth keeping can be repeated.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with user_errors(args.verbose):
        vocab = TagVocabulary.from_records(source_from_args(args).load())
        print(vocab.format_stats(args.top_k))
        pool = vocab.filtered(args.min_count)
        print(f"{len(pool)} tags appear in at least {args.min_count} captions")
        prompts = sample_prompts(
            pool,
            num_prompts=args.num_prompts,
            min_tags=args.min_tags,
            max_tags=args.max_tags,
            weighting=args.weighting,
            prefix=split_tags(args.prefix),
            seed=seed,
        )
    write_prompts(args.out, prompts)
    print(f"wrote {len(prompts)} prompts to {args.out} (seed {seed})")


if __name__ == "__main__":
    main(parse_args())
