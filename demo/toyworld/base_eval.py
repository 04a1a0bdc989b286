"""Check a saved toy base the way a user would meet it: load_base, the stock pipeline, the classifier.

Every base-world caption template is rendered for every attribute combination and scored on its own, and
fresh scenes go through the VAE and back, whose accuracy caps everything drawn after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from PIL import Image

from altadapter.devices import resolve_device
from altadapter.fileio import atomic_write
from altadapter.model import load_base, make_pipeline
from altadapter.rendering.grids import image_grid
from toyworld import captions, world
from toyworld.base_config import REPORT_FILE, SAMPLES_FILE, ToyBaseConfig


def render_prompts(
    base, prompts: list[str], *, steps: int, guidance_scale: float, seed: int, batch_size: int
) -> list[Image.Image]:
    """Sample one picture per prompt with the stock pipeline and DDIM, reproducibly by seed."""
    pipeline = make_pipeline(base, DDIMScheduler.from_config(base.scheduler_config))
    pipeline.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator(base.device).manual_seed(seed + start)
        images += pipeline(
            prompts[start : start + batch_size],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
        ).images
    return images


@torch.no_grad()
def vae_round_trip(vae, n: int, seed: int) -> dict:
    """MSE ([-1, 1] units) and classifier accuracy of VAE reconstructions of `n` fresh scenes."""
    rng = np.random.default_rng(seed)
    combos = world.all_attributes()
    attrs = [combos[i] for i in rng.integers(len(combos), size=n)]
    pixels = world.render_batch(attrs, vae.config.sample_size, rng, device=vae.device)
    images = pixels.permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
    reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    rgb = ((reconstruction + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return {
        "mse": F.mse_loss(reconstruction.float(), images.float()).item(),
        "accuracy": world.attribute_accuracy(list(rgb), attrs),
    }


def evaluate_toy_base(model_dir: str | Path, config: ToyBaseConfig) -> dict:
    """Render base-world prompts from a saved toy base (load_base + stock pipeline) and score them.

    Every caption template is scored on its own: a base is only as good as its worst natural phrasing.
    Returns {"base_world_accuracy", "per_template", "vae_round_trip", "eval"}; writes samples.png.
    """
    started = time.perf_counter()
    base = load_base(model_dir, device=resolve_device(config.device))
    by_template = captions.prompts_per_template(config.eval_combos, seed=config.seed)
    prompts = [prompt for group in by_template.values() for prompt in group]
    images = render_prompts(
        base,
        [p.text for p in prompts],
        steps=config.eval_steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        batch_size=config.eval_batch_size,
    )
    per_template, start = {}, 0
    for template, group in by_template.items():
        scores = world.attribute_accuracy(images[start : start + len(group)], [p.attrs for p in group])
        per_template[template] = {name: scores[name] for name in (*world.ATTRIBUTE_NAMES, "all")}
        start += len(group)
    # Samples: the first 10 combinations in each template, one template a row.
    count = min(10, config.eval_combos)
    samples = [image for i in range(len(by_template)) for image in images[i * config.eval_combos :][:count]]
    image_grid(samples, cols=count, gap=2).save(Path(model_dir) / SAMPLES_FILE)
    return {
        "base_world_accuracy": world.attribute_accuracy(images, [p.attrs for p in prompts]),
        "per_template": per_template,
        "vae_round_trip": vae_round_trip(base.vae, config.round_trip_scenes, seed=config.seed + 2),
        "eval": {
            "prompts": len(prompts),
            "scheduler": "DDIM",
            "steps": config.eval_steps,
            "guidance_scale": config.guidance_scale,
            "device": str(base.device),
            "seconds": round(time.perf_counter() - started, 1),
            "examples": [{"prompt": p.text, "expected": p.attrs.to_dict()} for p in prompts[:5]],
        },
    }


def reevaluate_toy_base(model_dir: str | Path, config: ToyBaseConfig) -> dict:
    """Evaluate a saved toy base again (other settings, another device) and update its training report."""
    path = Path(model_dir) / REPORT_FILE
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    report.update(evaluate_toy_base(model_dir, config))
    write_report(Path(model_dir), report)
    return report


def write_report(output_dir: Path, report: dict) -> None:
    with atomic_write(output_dir / REPORT_FILE) as handle:
        json.dump(report, handle, indent=2)
