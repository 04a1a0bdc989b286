"""Rendering speed: tuned and original in one batched denoising loop vs rendered separately.

    python bench/bench_render.py --preset tiny --num_prompts 4 --num_images 4 --steps 20   # 2-core CPU
    python bench/bench_render.py --preset m9 --num_prompts 4 --num_images 4 --steps 20     # one GPU, fp16

batched:  `render.render_comparison`: every prompt's tuned and original images share the UNet calls,
          at most --max_batch images per loop.
separate: what the write-up's scripts did: two stock diffusers pipeline runs per prompt (tuned through
          `prompt_embeds`, then original), with the same sampler and per-image seeds.
Numbers, not pass/fail: prints images/s of each, their ratio and the largest pixel difference between the
two ways (0 or 1: float noise), and writes JSON with --out. The model has random weights; each way runs
--repeats times, alternating, and the fastest run counts (the CPU machines are shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altadapter.adapters.conditioning import encode_prompt_pair
from altadapter.adapters.prompt import PromptAdapter, PromptConfig
from altadapter.devices import DTYPES
from altadapter.model import load_base, make_pipeline
from altadapter.rendering.sampler import RenderSettings, default_size, image_seed, render_comparison
from altadapter.rendering.schedulers import SCHEDULERS, make_scheduler
from altadapter.testing.tiny_models import PRESETS, build_model_dir

PROMPT = "1girl, solo, long hair, red dress, smile, simple background, hat"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=[*sorted(PRESETS), "m9"], default="tiny", help="tiny_models preset to build"
    )
    parser.add_argument(
        "--model_path", default=None, help="use this model folder instead of building --preset"
    )
    parser.add_argument("--num_prompts", type=int, default=4, help="prompts rendered")
    parser.add_argument("--num_images", type=int, default=4, help="images per prompt and row")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim", help="sampler")
    parser.add_argument("--max_batch", type=int, default=8, help="images per denoising loop (both ways)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, else fp32"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each way; the fastest counts")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def timed(work: Callable[[], list], device: torch.device) -> tuple[float, list]:
    """Seconds `work` takes, waiting for the GPU, and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path or build_model_dir(Path(tmp) / args.preset, args.preset)
        base = load_base(model_path, device=device, dtype=dtype)
    # The write-up's 100 vectors where the encoder has room for them (not on the tiny presets).
    num_prompts = min(100, base.info.max_text_positions // 4)
    adapter = PromptAdapter(PromptConfig(dim=base.info.hidden_size, num_prompts=num_prompts)).to(device)
    settings = RenderSettings(
        num_images=args.num_images,
        num_inference_steps=args.steps,
        scheduler=args.scheduler,
        max_batch=args.max_batch,
    )
    prompts = [f"{PROMPT}, {index}" for index in range(args.num_prompts)]

    pipeline = make_pipeline(base, make_scheduler(base, settings.scheduler))
    pipeline.set_progress_bar_config(disable=True)

    def stock(index: int, embeds: tuple[torch.Tensor, torch.Tensor]) -> list:
        generators = [
            torch.Generator().manual_seed(image_seed(settings.seed, index, j)) for j in range(args.num_images)
        ]
        return pipeline(
            prompt_embeds=embeds[0],
            negative_prompt_embeds=embeds[1],
            num_inference_steps=args.steps,
            num_images_per_prompt=args.num_images,
            generator=generators,
        ).images

    def separate() -> list:
        return [
            [stock(index, encode_prompt_pair(base, [prompt], row_adapter)) for row_adapter in (adapter, None)]
            for index, prompt in enumerate(prompts)
        ]

    def batched() -> list:
        return render_comparison(base, adapter, prompts, settings=settings, progress=False)

    # Warm-up (kernel selection, allocator) on a short run, untimed.
    warmup = dataclasses.replace(settings, num_images=1, num_inference_steps=2)
    render_comparison(base, adapter, prompts[:1], settings=warmup, progress=False)
    batched_s, separate_s = float("inf"), float("inf")
    for _ in range(args.repeats):
        seconds, together = timed(batched, device)
        batched_s = min(batched_s, seconds)
        seconds, alone = timed(separate, device)
        separate_s = min(separate_s, seconds)
    difference = max(
        int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b)).max())
        for result, (tuned, original) in zip(together, alone, strict=True)
        for a, b in zip([*result.tuned[1.0], *result.original], [*tuned, *original], strict=True)
    )
    images = 2 * args.num_prompts * args.num_images
    results = {
        "preset": None if args.model_path else args.preset,
        "model_path": args.model_path,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "size": default_size(base)[0],
        "num_prompts": args.num_prompts,
        "num_images": args.num_images,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "max_batch": args.max_batch,
        "images": images,
        "batched_images_per_s": images / batched_s,
        "separate_images_per_s": images / separate_s,
        "speedup": separate_s / batched_s,
        "repeats": args.repeats,
        "max_pixel_difference": difference,
        "torch": torch.__version__,
    }
    print(
        f"{images} images ({args.num_prompts} prompts x {args.num_images} x tuned+original, {args.steps} steps "
        f"{args.scheduler}, {results['size']}px, {dtype} on {results['device_name'] or device})"
    )
    print(f"batched:  {results['batched_images_per_s']:.3f} images/s")
    print(f"separate: {results['separate_images_per_s']:.3f} images/s")
    print(f"speedup:  {results['speedup']:.2f}x, largest pixel difference {difference}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(parse_args())
