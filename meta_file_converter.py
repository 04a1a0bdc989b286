"""Convert a folder of tagged images into the training dataset: the images plus metadata.jsonl.

Input: images (png, jpg, jpeg, webp, bmp; nested folders) each with a sidecar tag file of the same stem
(name.txt or name.caption, comma-separated danbooru tags), as a folder or a .zip / .tar of one (DeepGHS and
CyberHarem "IMG+TXT" archives). kohya's `N_concept` folders keep N as each picture's repeats per epoch (and a
picture without a tag file is captioned by the concept). Output: an image folder that
`datasets.load_dataset("imagefolder", data_dir=OUTPUT_DIR)` and the training scripts read. Files that
cannot be used are skipped and counted; re-running into the same folder is safe.

Example: python meta_file_converter.py --image_dir IMAGE_DIR --output_dir OUTPUT_DIR
"""

from __future__ import annotations

import argparse

from altadapter.cli_args import add_verbose_arg, user_errors
from altadapter.data.convert import convert_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--image_dir",
        required=True,
        help="folder of images with sidecar .txt/.caption tag files (searched recursively; kohya N_concept "
        "subfolders repeat their pictures N times), or a .zip / .tar of one",
    )
    parser.add_argument(
        "--output_dir", required=True, help="dataset folder to create or update; must not overlap --image_dir"
    )
    parser.add_argument(
        "--link",
        action="store_true",
        help="hard-link images instead of copying them (copies where the file system cannot link)",
    )
    parser.add_argument(
        "--underscores_to_spaces",
        action="store_true",
        help="write tags like long_hair as 'long hair' in captions",
    )
    parser.add_argument(
        "--strict", action="store_true", help="write nothing and exit 1 if any file would be skipped"
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    add_verbose_arg(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Convert, then print what was converted and what was skipped."""
    with user_errors(args.verbose):
        summary = convert_dataset(
            args.image_dir,
            args.output_dir,
            link=args.link,
            underscores_to_spaces=args.underscores_to_spaces,
            strict=args.strict,
            progress=not args.no_progress,
        )
    print(summary.format())


if __name__ == "__main__":
    main(parse_args())
