"""Training-step speed of every adapter kind: the naive step, this project's step, and the physical floor.

    python bench/bench_train.py --preset cpu --resolution 128 --batch_size 2          # 2-core CPU
    python bench/bench_train.py --preset m9 --resolution 512 --batch_size 6 --dtype bf16   # one GPU

naive:     what the write-up did: VAE encode and text encoder forward every step, fp32.
optimised: this project's step: cached latents (and, for the MLP, cached encoder outputs), the base in
           --dtype, SDPA attention: `altadapter.training.conditioning.Conditioner` + `altadapter.training.losses.diffusion_loss`.
floor:     the irreducible part: UNet forward + backward to its conditioning input on precomputed inputs
           (plus, for the kinds that act on or in the encoder, its forward + backward).
Numbers, not pass/fail: prints ms/step, the ratios and peak memory, and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altadapter.adapters import get_kind, kind_names
from altadapter.data.records import Record
from altadapter.devices import DTYPES
from altadapter.encoding import encode_original
from altadapter.model import AltDiffusionBase, load_base
from altadapter.testing.tiny_models import PRESETS, build_model_dir
from altadapter.training.caches import LatentCache
from altadapter.training.conditioning import Conditioner
from altadapter.training.config import PreserveConfig
from altadapter.training.losses import diffusion_loss

CAPTION = "1girl, solo, long hair, red dress, smile, simple background, looking at viewer, hat"
KINDS = kind_names()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "m9"], default="cpu", help="model to build")
    parser.add_argument(
        "--model_path", default=None, help="use this model folder instead of building --preset"
    )
    parser.add_argument("--resolution", type=int, default=128, help="image size in pixels")
    parser.add_argument("--batch_size", type=int, default=2, help="images per step")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the optimised step's base"
    )
    parser.add_argument("--num_prompts", type=int, default=100, help="prompt adapter vectors")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="adapter kinds to time, each with its training defaults (vocab: a vector per caption tag; "
        "lora: rank 4 on q, k, v, out)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="also time the UNet with it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated since the last reset on a GPU; the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_step(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """Median ms per step and peak memory (MB) of `step`."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2], peak_memory_mb(device)


def make_adapter(kind: str, base: AltDiffusionBase, num_prompts: int) -> torch.nn.Module:
    """An adapter of `kind` from its training defaults (--num_prompts for kinds that take it)."""
    options = get_kind(kind).options_class()
    if "num_prompts" in {field.name for field in dataclasses.fields(options)}:
        options = dataclasses.replace(options, num_prompts=num_prompts)
    return get_kind(kind).build(options, base, [CAPTION], seed=0).to(base.device)


def variants(
    kind: str, base: AltDiffusionBase, args: argparse.Namespace
) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """The three steps for one adapter kind on one loaded base (in the base's dtype), and what takes the
    adapter back out of the base afterwards (a LoRA's layers), so the next kind is timed on the original."""
    device, batch = base.device, args.batch_size
    adapter = make_adapter(kind, base, args.num_prompts).requires_grad_(True)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    noise_scheduler = base.noise_scheduler()
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    pixels = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    with torch.no_grad():
        moments = base.vae.encode(pixels.to(base.dtype)).latent_dist.parameters.float().cpu()
    cache = LatentCache(
        [moments.unsqueeze(1)],
        [(args.resolution, args.resolution)],
        [Record(Path(f"{i}.png"), CAPTION) for i in range(batch)],
        [(0, i) for i in range(batch)],
        base.vae.config.scaling_factor,
    )
    adapter_kind = get_kind(kind)
    no_penalty = PreserveConfig(preserve_weight=0.0, preserve_prompts=None, preserve_batch_size=0)
    conditioner = Conditioner(adapter_kind, base, adapter, [CAPTION], no_penalty, progress=False)
    scaling = base.vae.config.scaling_factor
    captions = [CAPTION] * batch
    indices, flips = torch.arange(batch), torch.zeros(batch, dtype=torch.long)

    def finish(loss: torch.Tensor) -> None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def random_inputs(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(latents)
        return noise, torch.randint(0, 1000, (batch,), device=device)

    def naive() -> None:
        with torch.no_grad():
            latents = base.vae.encode(pixels.to(base.dtype)).latent_dist.sample() * scaling
        if adapter_kind.acts_on_output:
            with torch.no_grad():
                original = encode_original(base, captions, warn=False)
            conditioning = adapter_kind.transform(adapter, original)
        else:
            ids, mask = adapter_kind.tokenize(base, captions, adapter.config, warn=False)
            conditioning = adapter_kind.encode(base, ids, mask, adapter)
        finish(diffusion_loss(base, noise_scheduler, conditioning, latents, *random_inputs(latents)))

    def optimised() -> None:
        generator = torch.Generator().manual_seed(0)
        latents = cache.sample(indices, flips, generator).to(device, base.dtype)
        conditioning, _ = conditioner.tuned_with_penalty(adapter, captions)
        finish(diffusion_loss(base, noise_scheduler, conditioning, latents, *random_inputs(latents)))

    fixed_latents = cache.mean(indices).to(device, base.dtype)
    fixed_noise, fixed_t = random_inputs(fixed_latents)
    noisy = noise_scheduler.add_noise(fixed_latents, fixed_noise, fixed_t)
    if adapter_kind.acts_on_output:
        fixed_conditioning = conditioner.stack_originals(captions).detach()
    else:
        fixed_ids, fixed_mask = conditioner.stack_tokens(captions)

    def floor() -> None:
        if adapter_kind.acts_on_output:
            conditioning = fixed_conditioning.clone().requires_grad_(True)
        else:
            conditioning = adapter_kind.encode(base, fixed_ids, fixed_mask, adapter)
        base.unet(
            noisy, fixed_t, encoder_hidden_states=conditioning
        ).sample.float().square().mean().backward()

    return {"naive": naive, "optimised": optimised, "floor": floor}, lambda: adapter_kind.detach(
        adapter, base
    )


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    model_path = args.model_path
    if model_path is None:
        model_path = build_model_dir(Path(tempfile.mkdtemp(prefix="bench-")) / args.preset, args.preset)
    results: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "preset": args.preset,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "adapters": {},
    }
    rows: dict[str, dict] = {kind: {} for kind in args.kinds}
    # One base in memory at a time, so peak memory is that of one configuration. The naive step runs the
    # write-up's way, in fp32; the optimised step and the floor in --dtype.
    for dtype, names in ((args.dtype, ("optimised", "floor")), ("fp32", ("naive",))):
        base = load_base(model_path, device=device, dtype=dtype)
        for kind, row in rows.items():
            steps, release = variants(kind, base, args)
            for name in names:
                ms, memory = time_step(steps[name], device, args.steps, args.warmup)
                row[name] = {"ms_per_step": round(ms, 2), "peak_memory_mb": round(memory, 1)}
            if args.gradient_checkpointing and "optimised" in names:
                base.unet.enable_gradient_checkpointing()
                ms, memory = time_step(steps["optimised"], device, args.steps, args.warmup)
                base.unet.disable_gradient_checkpointing()
                row["optimised_gradient_checkpointing"] = {
                    "ms_per_step": round(ms, 2),
                    "peak_memory_mb": round(memory, 1),
                }
            release()
        del base, steps
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for kind, row in rows.items():
        row["naive_over_optimised"] = round(row["naive"]["ms_per_step"] / row["optimised"]["ms_per_step"], 2)
        row["optimised_over_floor"] = round(row["optimised"]["ms_per_step"] / row["floor"]["ms_per_step"], 2)
        results["adapters"][kind] = row
        timings = ", ".join(f"{k} {v['ms_per_step']:.1f} ms" for k, v in row.items() if isinstance(v, dict))
        print(f"{kind:>6}: {timings}")
        print(
            f"        naive/optimised {row['naive_over_optimised']}x, optimised/floor {row['optimised_over_floor']}x, "
            f"peak {row['optimised']['peak_memory_mb']:.0f} MB"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main(parse_args())
