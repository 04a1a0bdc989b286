"""Flags of the rendering scripts: the write-up's two accept one adapter kind each, render_adapter.py
(kind None here) any kind, read from the adapter file; all share one flag vocabulary."""

from __future__ import annotations

import argparse

from altadapter.adapters import get_kind
from altadapter.cli_args import add_model_args, add_verbose_arg
from altadapter.devices import DTYPES
from altadapter.rendering.sampler import RenderSettings
from altadapter.rendering.schedulers import SCHEDULERS


def build_parser(kind: str | None, description: str) -> argparse.ArgumentParser:
    """The whole flag set of one rendering script."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_render_args(parser, kind)
    return parser


def add_render_args(parser: argparse.ArgumentParser, kind: str | None) -> None:
    """Every flag of the rendering script for adapters of `kind` (None: of any kind)."""
    add_model_args(parser)
    add_verbose_arg(parser)
    add_input_args(parser, kind)
    add_sampling_args(parser)
    add_output_args(parser, kind)
    add_runtime_args(parser)


def add_input_args(parser: argparse.ArgumentParser, kind: str | None) -> None:
    """The adapter file and the prompts."""
    inputs = parser.add_argument_group("adapter and prompts")
    inputs.add_argument(
        "--adapter",
        required=True,
        help=f"{kind} adapter file (.safetensors) written by {get_kind(kind).train_command}"
        if kind
        else "adapter file (.safetensors) of any kind, written by a training script",
    )
    prompts = inputs.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompts", help="prompts file, one prompt per line (UTF-8), as prompts_generator.py writes it"
    )
    prompts.add_argument("--prompt", action="append", help="a prompt to render; repeat the flag for more")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """How to sample; the same for the tuned rows and the original."""
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


def add_output_args(parser: argparse.ArgumentParser, kind: str | None) -> None:
    """Where the images go, and what report.md adds beside them."""
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir",
        default=f"images/{kind}" if kind else None,
        help="folder for the grids, render.json and report.md"
        + ("" if kind else "; unset (%(default)s): images/KIND, KIND the adapter's kind"),
    )
    other = get_kind(kind).counterpart if kind else None
    output.add_argument(
        "--compare_with",
        default=None,
        help=f"output folder of {get_kind(other).render_command} rendered from the same prompts: "
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
    if kind is not None and get_kind(kind).vector_noun:
        output.add_argument(
            "--top_k_tokens",
            type=int,
            default=5,
            help=f"list each {get_kind(kind).vector_noun}'s nearest vocabulary tokens in report.md "
            "(0: leave them out)",
        )
    elif kind is None:
        output.add_argument(
            "--top_k_tokens",
            type=int,
            default=None,
            help="adapters of learned input vectors: list each one's nearest vocabulary tokens in "
            "report.md; unset (%(default)s): 5, 0: leave them out",
        )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """The device and dtype of the frozen base."""
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
