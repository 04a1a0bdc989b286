"""The run of the rendering scripts: check the inputs, load, render tuned and original, write the report.

The write-up's two scripts accept one adapter kind each, render_adapter.py (kind None here) any kind,
read from the adapter file."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from altadapter.adapter_io import check_kind, load_adapter, read_adapter_file
from altadapter.adapters import get_kind
from altadapter.cli_args import setup_logging, user_errors
from altadapter.data.prompts import read_prompts
from altadapter.devices import dtype_name, resolve_device, resolve_dtype
from altadapter.model import load_base, load_scheduler_config
from altadapter.rendering import report
from altadapter.rendering.args import settings_from_args
from altadapter.rendering.clip_score import ClipScorer, prompt_scores
from altadapter.rendering.sampler import render_comparison, save_comparison
from altadapter.rendering.schedulers import check_steps

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, kind: str | None) -> None:
    """Render tuned and original side by side; write the grids, render.json and report.md.

    kind None accepts an adapter of any kind. Bad input (files, adapter kind or base, prompts) ends the
    program with one line on stderr, exit status 2.
    """
    setup_logging(args.verbose)
    with user_errors(args.verbose):
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        # The cheap checks first, so a typo does not wait for the model to load.
        prompts = read_prompts(args.prompts) if args.prompts else list(args.prompt)
        settings = settings_from_args(args)
        _, header = read_adapter_file(args.adapter)
        check_kind(args.adapter, header, kind)
        top_k = nearest_token_count(args, header.kind)
        if args.compare_with:
            report.check_comparable(
                header.kind, prompts, report.read_record(args.compare_with), args.compare_with
            )
        check_steps(settings.scheduler, settings.num_inference_steps, load_scheduler_config(args.model_path))
        base = load_base(args.model_path, device=device, dtype=dtype)
        adapter, metadata = load_adapter(
            args.adapter, base.info, expected_kind=kind, allow_other_base=args.allow_other_base
        )
        scorer = ClipScorer(args.clip_model, device=device, dtype=dtype) if args.clip_model else None
    settings = settings.sized(base)
    output_dir = args.output_dir or f"images/{metadata.kind}"
    adapter.to(device)
    # Warnings (a truncated prompt, say) print above the progress bar instead of through it.
    with logging_redirect_tqdm():
        results = render_comparison(base, adapter, prompts, settings=settings)
    written = save_comparison(results, output_dir, settings)
    with images_kept_if_the_report_fails(len(written), output_dir, args.verbose):
        record = report.build_record(
            results,
            settings,
            base=base,
            adapter_path=args.adapter,
            metadata=metadata,
            runtime={"device": str(device), "dtype": dtype_name(dtype), "clip_model": args.clip_model},
            clip=[prompt_scores(scorer, result) for result in results] if scorer else None,
            nearest=report.nearest_tokens(base, adapter, top_k) if top_k > 0 else None,
        )
        report.write_record(output_dir, record)
        path = report.write_report(output_dir, record, args.compare_with)
    logger.info("wrote %d images and %s", len(written), path)


@contextlib.contextmanager
def images_kept_if_the_report_fails(count: int, output_dir: str | Path, verbose: bool) -> Iterator[None]:
    """End a failure after the images (scores, nearest tokens, render.json, report.md) in one line that
    says the images are written and where, and exit 1; --verbose adds the traceback.

    The images are what the run was for: a traceback about the report alone reads as if nothing was made.
    """
    try:
        yield
    except Exception as error:
        print(
            f"error: {count} image files are written in {output_dir}, but their report failed: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        if verbose:
            raise
        raise SystemExit(1) from None


def nearest_token_count(args: argparse.Namespace, kind: str) -> int:
    """How many nearest tokens report.md lists per learned vector: --top_k_tokens where it applies."""
    asked = getattr(args, "top_k_tokens", None)  # scripts of kinds without vectors have no such flag
    if get_kind(kind).vector_noun is None:
        if asked:
            raise ValueError(
                f"--top_k_tokens applies to adapters of learned input vectors; {args.adapter} is a {kind} adapter"
            )
        return 0
    return 5 if asked is None else asked
