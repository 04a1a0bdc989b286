"""Flags shared by the six scripts, defined once so the two trainers and the two renderers cannot drift."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

from altadapter.errors import OutputError, Stopped, UserError

DEFAULT_MODEL = "BAAI/AltDiffusion-m9"


@contextlib.contextmanager
def user_errors(verbose: bool = False) -> Iterator[None]:
    """Show an error the user acts on as one line on stderr, with its exit status, instead of a traceback.

    A mistake (ValueError, UserError) is `error: ...` and exit 2, as argparse does for bad flags; a file
    that could not be written (OutputError) is `error: ...` and exit 1; a run stopped by a signal (Stopped),
    which has printed how to resume, exits 128 + the signal's number. --verbose keeps an error's traceback.
    """
    try:
        yield
    except Stopped as stop:
        raise SystemExit(stop.status) from None
    except (ValueError, UserError, OutputError) as error:
        if verbose:
            raise
        if getattr(error, "shown", True):
            print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1 if isinstance(error, OutputError) else 2) from None


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model_path and --allow_other_base: which frozen base to load and how strict to be about it."""
    group = parser.add_argument_group("base model")
    group.add_argument(
        "--model_path",
        "--pretrained_model_name_or_path",
        default=DEFAULT_MODEL,
        help="hub id or local diffusers folder of an AltDiffusion-family model (AltDiffusion, -m9, -m18)",
    )
    group.add_argument(
        "--allow_other_base",
        action="store_true",
        help="use an adapter even if its recorded base fingerprint differs from this base's weights",
    )


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    """--verbose: library INFO logs, and a traceback with an error."""
    parser.add_argument(
        "--verbose", action="store_true", help="show library INFO logs, and a traceback with an error"
    )


def setup_logging(verbose: bool = False) -> None:
    """Plain `LEVEL message` lines on stderr; quiet third-party INFO chatter unless --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not verbose:
        for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.WARNING)
