"""Flags and run of the rendering scripts: the write-up's two accept one adapter kind each, and
render_adapter.py (kind None here) any kind, read from the adapter file."""

from __future__ import annotations

import argparse
import logging

from tqdm.contrib.logging import logging_redirect_tqdm

from altadapter.adapter_io import COUNTERPART, SCRIPTS, check_kind, load_adapter, read_adapter_file
from altadapter.adapters import AdapterKind
from altadapter.cli_args import add_model_args, add_verbose_arg, setup_logging, user_errors
from altadapter.data.prompts import read_prompts
from altadapter.devices import DTYPES, dtype_name, resolve_device, resolve_dtype
from altadapter.model import load_base
from altadapter.rendering import report
from altadapter.rendering.clip_score import ClipScorer, prompt_scores
from altadapter.rendering.sampler import RenderSettings, render_comparison, save_comparison
from altadapter.rendering.schedulers import SCHEDULERS

logger = logging.getLogger(__name__)


# Kinds whose adapters are learned input vectors, whose nearest vocabulary tokens report.md can list.
VECTOR_KINDS = ("prompt", "vocab")


def build_parser(kind: AdapterKind | None, description: str) -> argparse.ArgumentParser:
    """The whole flag set of one rendering script."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_render_args(parser, kind)
    return parser


def add_render_args(parser: argparse.ArgumentParser, kind: AdapterKind | None) -> None:
    """Every flag of the rendering script for adapters of `kind` (None: of any kind)."""
    add_model_args(parser)
    add_verbose_arg(parser)
    inputs = parser.add_argument_group("adapter and prompts")
    inputs.add_argument(
        "--adapter",
        required=True,
        help=f"{kind} adapter file (.safetensors) written by {SCRIPTS[kind][0]}"
        if kind
        else "adapter file (.safetensors) of any kind, written by a training script",
    )
    prompts = inputs.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompts", help="prompts file, one prompt per line (UTF-8), as prompts_generator.py writes it"
    )
    prompts.add_argument("--prompt", action="append", help="a prompt to render; repeat the flag for more")

    sampling = parser.add_argument_group("sampling (the same for tuned and original)")
    sampling.add_argument("--num_images", type=int, default=4, help="images per prompt")
    sampling.add_argument(
        "--num_inference_steps", type=int, default=100, help="denoising steps (the write-up found 100 needed)"
    )
    sampling.add_argument(
        "--guidance_scale", type=float, default=7.5, help="classifier-free guidance; 1 or less turns it off"
    )
    sampling.add_argument(
        "--negative_prompt",
        default="",
        help="negative prompt; it goes through the adapter for the tuned rows",
    )
    sampling.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed; image j of prompt i gets a seed derived from (seed, i, j)",
    )
    sampling.add_argument(
        "--height", type=int, default=None, help="pixels; unset: the model's own size (512 on m9)"
    )
    sampling.add_argument(
        "--width", type=int, default=None, help="pixels; unset: the model's own size (512 on m9)"
    )
    sampling.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        default="pndm",
        help="sampler: pndm (the model's own), ddim, dpm++2m (fewer steps), euler_a (ancestral)",
    )
    sampling.add_argument(
        "--scale",
        type=float,
        nargs="+",
        default=[1.0],
        help="adapter strengths, one tuned row each (0 is the original, 1 the adapter as trained)",
    )
    sampling.add_argument(
        "--max_batch",
        type=int,
        default=8,
        help="images denoised together (tuned and original rows count alike); "
        "with guidance the UNet batch is twice this. Lower it if memory runs out",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir",
        default=f"images/{kind}" if kind else None,
        help="folder for the grids, render.json and report.md"
        + ("" if kind else "; unset (%(default)s): images/KIND, KIND the adapter's kind"),
    )
    other = COUNTERPART.get(kind)
    output.add_argument(
        "--compare_with",
        default=None,
        help=f"output folder of {SCRIPTS[other][1]} rendered from the same prompts: "
        "report.md then also gets the write-up's MLP | Prompt | original table"
        if other
        else "output folder of an adapter of another kind rendered from the same prompts: report.md "
        "then also gets a table of both adapters and the original",
    )
    output.add_argument(
        "--clip_model",
        default=None,
        help="local AltCLIP model folder (e.g. a copy of BAAI/AltCLIP-m9): adds CLIP scores to report.md",
    )
    if kind == "prompt":
        output.add_argument(
            "--top_k_tokens",
            type=int,
            default=5,
            help="list each prompt vector's nearest vocabulary tokens in report.md (0: leave them out)",
        )
    elif kind is None:
        output.add_argument(
            "--top_k_tokens",
            type=int,
            default=None,
            help="prompt and vocab adapters: list each learned vector's nearest vocabulary tokens in "
            "report.md; unset (%(default)s): 5, 0: leave them out",
        )

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="torch device; auto: cuda if available, else cpu")
    runtime.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="dtype of the frozen base; auto: fp16 on cuda, fp32 elsewhere (CPUs are slow or inexact in fp16)",
    )


def settings_from_args(args: argparse.Namespace) -> RenderSettings:
    """RenderSettings from the flags (validated there)."""
    return RenderSettings(
        num_images=args.num_images,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
        scales=tuple(args.scale),
        max_batch=args.max_batch,
    )


def run(args: argparse.Namespace, kind: AdapterKind | None) -> None:
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


def nearest_token_count(args: argparse.Namespace, kind: str) -> int:
    """How many nearest tokens report.md lists per learned vector: --top_k_tokens where it applies."""
    asked = getattr(args, "top_k_tokens", None)  # the MLP script has no vectors and no such flag
    if kind not in VECTOR_KINDS:
        if asked:
            raise ValueError(
                f"--top_k_tokens applies to prompt and vocab adapters; {args.adapter} is a {kind} adapter"
            )
        return 0
    return 5 if asked is None else asked
