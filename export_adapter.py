"""Export an adapter to the files other tools load: diffusers textual inversion or a PEFT adapter folder.

vocab -> --format diffusers: one `<tag>.safetensors` per tag ({token: vectors}) that a stock pipeline's
`pipe.load_textual_inversion(file)` loads, `tokens.json` (tag -> the token to type in its place) and a
README.md with the lines that load them. lora -> --format peft: `adapter_config.json` +
`adapter_model.safetensors`, which `peft.PeftModel.from_pretrained(pipe.text_encoder, DIR)` loads.
An adapter of any kind also renders inside a stock pipeline with `altadapter.attach_adapter(pipe, FILE)`.

Example:
  python export_adapter.py --adapter OUT/altm9-vocab/altm9-vocab.safetensors --format diffusers --output_dir ti
"""

from __future__ import annotations

import argparse

from altadapter.cli_args import DEFAULT_MODEL, add_verbose_arg, setup_logging, user_errors
from altadapter.export import export_adapter, export_formats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--adapter", required=True, help="adapter file (.safetensors) written by a training script"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=sorted(set(export_formats().values())),
        help="; ".join(f"{form} for a {name} adapter" for name, form in export_formats().items()),
    )
    parser.add_argument("--output_dir", required=True, help="folder for the exported files")
    parser.add_argument(
        "--model_path",
        "--pretrained_model_name_or_path",
        default=DEFAULT_MODEL,
        help="the base the export will be used with (hub id or local folder; only its tokenizer is read): "
        "vocab tokens are chosen so that its tokenizer does not know them yet",
    )
    add_verbose_arg(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Export the adapter and list the files written."""
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        written = export_adapter(args.adapter, args.format, args.output_dir, model_path=args.model_path)
    for path in written:
        print(path)


if __name__ == "__main__":
    main(parse_args())
