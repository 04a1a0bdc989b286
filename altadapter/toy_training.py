"""Train the demo's toy base model from scratch on the toy world, then check that it draws its own world.

Two phases on one pool of rendered scenes: a VAE (reconstruction + a small KL term), then text encoder and
UNet together with the epsilon-prediction objective over the m9 DDPM schedule (`SCHEDULER_CONFIG`), 10%
empty captions for classifier-free guidance. Captions come from a bank of plain-word captions per attribute
combination (`toy_world.base_caption`), tokenized once, so a step never waits for the tokenizer.

The evaluation takes the path every user of the tool takes: the model is saved with `save_model_dir`,
reloaded with `load_base`, sampled with the stock pipeline from `make_pipeline`, and the pictures are read by
`toy_world.classify_image`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from altadapter import toy_world
from altadapter.fileio import atomic_write
from altadapter.model import load_base, make_pipeline
from altadapter.tiny_models import (
    SCHEDULER_CONFIG,
    ModelSize,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    save_model_dir,
)

logger = logging.getLogger(__name__)

# 32 px pictures, 16x16x4 latents. model_max_length 160 leaves the prompt adapter room for the write-up's
# 100 vectors plus a long domain caption (~50 tokens), as m9's 512 positions do for real captions.
TOY_SIZE = ModelSize(
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=512,
    project_dim=128,
    model_max_length=160,
    unet_channels=(64, 128),
    unet_layers_per_block=1,
    attention_head_dim=4,  # diffusers reads it as the number of heads: 4 heads of 16 / 32 channels
    vae_channels=(32, 64),
    vae_layers_per_block=1,
    latent_channels=4,
    sample_size=32,
)
REPORT_FILE = "training_report.json"
SAMPLES_FILE = "samples.png"


@dataclass(frozen=True)
class ToyBaseConfig:
    """Everything a toy-base run depends on; defaults are sized for one H100 in about four minutes."""

    seed: int = 0
    size: ModelSize = TOY_SIZE
    pool_size: int = 100_000  # rendered scenes; each is seen with a fresh caption every time
    captions_per_combo: int = 256  # caption bank: this many captions for each of the 90 combinations
    max_filler: int = 12  # neutral phrases mixed into a base caption, so long captions are familiar
    time_budget_s: float = 180.0  # both training phases together
    vae_share: float = 0.2  # the most of time_budget_s the VAE may take (it stops earlier at vae_steps)
    vae_steps: int = 1500
    vae_batch_size: int = 256
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # per latent element, against the per-pixel MSE
    unet_steps: int = 8000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # empty captions, which classifier-free guidance needs
    position_shift: float = 0.5  # share of captions moved to later positions (where prompt vectors push text)
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    ema_decay: float = 0.999
    log_every: int = 100
    eval_prompts: int = 180  # base-world prompts rendered at the end (two per attribute combination)
    eval_steps: int = 30
    guidance_scale: float = 5.0
    eval_batch_size: int = 90
    round_trip_scenes: int = 512  # fresh scenes through the saved VAE, for its MSE and attribute accuracy
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = ("pool_size", "captions_per_combo", "batch_size", "vae_batch_size", "eval_prompts")
        for name in (*positive, "eval_batch_size", "eval_steps", "round_trip_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("caption_dropout", "position_shift", "vae_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")


def resolve_device(name: str) -> torch.device:
    """The device "auto" means (cuda when available, else cpu); any other name as torch spells it."""
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name
    )


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimiser state stay fp32); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class ScenePool:
    """Rendered scenes and the index of each one's attribute combination in `toy_world.all_attributes()`."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    combos: torch.Tensor  # (N,) int64

    @staticmethod
    def render(n: int, size: int, rng: np.random.Generator, device: torch.device) -> ScenePool:
        combos = toy_world.all_attributes()
        index = rng.integers(len(combos), size=n)
        images = toy_world.render_batch([combos[i] for i in index], size, rng, device=device)
        return ScenePool(images.permute(0, 3, 1, 2).contiguous(), torch.as_tensor(index, device=device))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images at `index` as floats in [-1, 1], the VAE's range: (B, 3, H, W)."""
        return self.images[index].float() / 127.5 - 1


def build_caption_bank(tokenizer, config: ToyBaseConfig, rng: np.random.Generator) -> torch.Tensor:
    """Token ids of `captions_per_combo` base captions for each combination: (90, K, model_max_length)."""
    combos = toy_world.all_attributes()
    captions = [
        toy_world.base_caption(attrs, rng, max_filler=config.max_filler)
        for attrs in combos
        for _ in range(config.captions_per_combo)
    ]
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.view(len(combos), config.captions_per_combo, -1)


def schedule(progress: float, warmup: float) -> float:
    """LR multiplier: linear warm-up over the first `warmup` of the run, then cosine down to 0.1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


class _Clock:
    """Progress of a phase: the larger of steps done / max steps and seconds used / seconds allowed."""

    def __init__(self, max_steps: int, budget_s: float) -> None:
        self.max_steps, self.budget_s, self.start = max_steps, budget_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        return max(step / self.max_steps, self.elapsed() / self.budget_s)


def train_vae(vae, pool: ScenePool, config: ToyBaseConfig, device: torch.device, budget_s: float) -> dict:
    """Fit the VAE to the pool; set its scaling factor so scaled latents have unit variance."""
    vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(config.seed)
    clock, step, losses = _Clock(config.vae_steps, budget_s), 0, []
    while clock.progress(step) < 1:
        for group in optimizer.param_groups:
            group["lr"] = config.vae_lr * schedule(clock.progress(step), 0.05)
        index = torch.randint(len(pool.images), (config.vae_batch_size,), device=device, generator=generator)
        images = pool.batch(index)
        with autocast(device):
            posterior = vae.encode(images).latent_dist
            reconstruction = vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(reconstruction.float(), images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 10 == 0 or step == 1:  # .item() waits for the GPU: read the loss now and then
            losses.append(mse.item())
        if step % config.log_every == 0:
            logger.info("vae step %d  mse %.4f  %.1f s", step, np.mean(losses[-10:]), clock.elapsed())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = vae.encode(pool.batch(torch.arange(min(len(pool.images), 2048), device=device))).latent_dist
        std = sample.sample(generator).float().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return {
        "steps": step,
        "seconds": round(clock.elapsed(), 1),
        "final_mse": float(np.mean(losses[-10:])),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
    }


@torch.no_grad()
def encode_pool(vae, pool: ScenePool, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every scene, already multiplied by the scaling factor: (N, 4, h, w) each."""
    means, stds = [], []
    for start in range(0, len(pool.images), batch_size):
        index = torch.arange(start, min(start + batch_size, len(pool.images)), device=pool.images.device)
        posterior = vae.encode(pool.batch(index)).latent_dist
        means.append(posterior.mean * vae.config.scaling_factor)
        stds.append(posterior.std * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


def shifted_positions(input_ids: torch.Tensor, pad_id: int, share: float, generator) -> torch.Tensor:
    """XLM-R position ids, with the text of a random `share` of rows moved right by a random gap after <s>.

    Real XLM-R learned every one of its positions in pre-training; the toy one only sees short captions.
    The gap is where the prompt adapter puts its vectors, so the text still reads at the positions it lands on.
    """
    mask = (input_ids != pad_id).long()  # (B, T)
    positions = torch.cumsum(mask, dim=1) * mask + pad_id
    room = input_ids.shape[1] - mask.sum(dim=1)  # free positions after the caption
    rows = torch.rand(input_ids.shape[0], device=input_ids.device, generator=generator)
    shift = (torch.rand(rows.shape, device=rows.device, generator=generator) * (room + 1)).long()
    shift = torch.where(rows < share, shift, torch.zeros_like(shift))
    after_bos = torch.arange(input_ids.shape[1], device=input_ids.device) >= 1
    return positions + shift[:, None] * mask * after_bos


def train_unet(
    unet,
    text_encoder,
    latents,
    bank: torch.Tensor,
    pool: ScenePool,
    config: ToyBaseConfig,
    device: torch.device,
    budget_s: float,
    empty_ids: torch.Tensor,
) -> dict:
    """Train text encoder + UNet jointly (eps prediction); leave the EMA weights in the modules."""
    means, stds = latents
    modules = [
        unet.to(device).train().requires_grad_(True),
        text_encoder.to(device).train().requires_grad_(True),
    ]
    params = [p for module in modules for p in module.parameters()]
    # No weight decay: it would shrink the embeddings of words the base never sees (the domain's words)
    # towards one vector, and an adapter could no longer tell them apart.
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, fused=device.type == "cuda")
    ema = [p.detach().clone() for p in params]
    alphas_cumprod = _noise_schedule().to(device)
    generator = torch.Generator(device).manual_seed(config.seed + 1)
    pad_id = text_encoder.config.pad_token_id
    clock, step, losses, curve = _Clock(config.unet_steps, budget_s), 0, [], []
    warmup = config.warmup_steps / config.unet_steps
    while clock.progress(step) < 1:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule(clock.progress(step), warmup)
        b = config.batch_size
        index = torch.randint(len(means), (b,), device=device, generator=generator)
        x0 = means[index] + stds[index] * torch.randn(means[index].shape, device=device, generator=generator)
        caption = torch.randint(bank.shape[1], (b,), device=device, generator=generator)
        ids = bank[pool.combos[index], caption]
        dropped = torch.rand(b, device=device, generator=generator) < config.caption_dropout
        ids = torch.where(dropped[:, None], empty_ids, ids)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        t = torch.randint(len(alphas_cumprod), (b,), device=device, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device):
            positions = shifted_positions(ids, pad_id, config.position_shift, generator)
            cond = text_encoder(ids, position_ids=positions)[0]  # (B, T, project_dim)
            prediction = unet(noisy, t, cond).sample
        per_sample = (prediction.float() - noise).square().mean(dim=(1, 2, 3))
        if config.min_snr_gamma > 0:
            snr = a.view(-1) / (1 - a.view(-1))
            per_sample = per_sample * torch.clamp(snr, max=config.min_snr_gamma) / snr
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if step % 10 == 0 or step == 1:
            losses.append(loss.item())
        if step % config.log_every == 0:
            curve.append(
                {"step": step, "loss": float(np.mean(losses[-10:])), "seconds": round(clock.elapsed(), 1)}
            )
            logger.info(
                "unet step %d  loss %.4f  lr %.2e  %.1f s  %.1f steps/s",
                step,
                curve[-1]["loss"],
                optimizer.param_groups[0]["lr"],
                clock.elapsed(),
                step / clock.elapsed(),
            )
    with torch.no_grad():
        for param, average in zip(params, ema, strict=True):
            param.copy_(average)
    for module in modules:
        module.eval().requires_grad_(False)
    return {
        "steps": step,
        "seconds": round(clock.elapsed(), 1),
        "final_loss": float(np.mean(losses[-10:])),
        "samples_seen": step * config.batch_size,
        "loss_curve": curve,
    }


def _noise_schedule() -> torch.Tensor:
    """alphas_cumprod of the m9 DDPM schedule (scaled_linear 0.00085..0.012 over 1000 steps): (1000,)."""
    return DDPMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod


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
    combos = toy_world.all_attributes()
    attrs = [combos[i] for i in rng.integers(len(combos), size=n)]
    pixels = toy_world.render_batch(attrs, vae.config.sample_size, rng, device=vae.device)
    images = pixels.permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
    reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    rgb = ((reconstruction + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return {
        "mse": F.mse_loss(reconstruction.float(), images.float()).item(),
        "accuracy": toy_world.attribute_accuracy(list(rgb), attrs),
    }


def save_grid(images: list[Image.Image], path: str | Path, columns: int = 10) -> None:
    """Tile pictures of one size into a grid with 2-pixel gaps."""
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * (width + 2) - 2, rows * (height + 2) - 2), "gray")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * (width + 2), (index // columns) * (height + 2)))
    grid.save(path)


def evaluate_toy_base(model_dir: str | Path, config: ToyBaseConfig) -> dict:
    """Render base-world prompts from a saved toy base (load_base + stock pipeline) and score them.

    Returns {"base_world_accuracy", "vae_round_trip", "eval"}; writes samples.png (the first 40) beside it.
    """
    started = time.perf_counter()
    base = load_base(model_dir, device=resolve_device(config.device))
    prompts = toy_world.base_world_prompts(config.eval_prompts, seed=config.seed)
    images = render_prompts(
        base,
        [p.text for p in prompts],
        steps=config.eval_steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        batch_size=config.eval_batch_size,
    )
    save_grid(images[:40], Path(model_dir) / SAMPLES_FILE)
    return {
        "base_world_accuracy": toy_world.attribute_accuracy(images, [p.attrs for p in prompts]),
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
    _write_report(Path(model_dir), report)
    return report


def train_toy_base(config: ToyBaseConfig, output_dir: str | Path) -> dict:
    """Train a toy base, save it to `output_dir` (fp16 weights), evaluate it through `load_base`.

    Returns the report that is also written to `output_dir/training_report.json`.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # every step has the same shapes
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    size = config.size
    tokenizer = build_tokenizer(toy_world.TOY_VOCABULARY, size.model_max_length)
    text_encoder, unet, vae = build_text_encoder(size, len(tokenizer)), build_unet(size), build_vae(size)
    parameters = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae))
    }
    logger.info("device %s; parameters %s", device, parameters)

    pool = ScenePool.render(config.pool_size, size.sample_size, rng, device)
    bank = build_caption_bank(tokenizer, config, rng).to(device)
    empty_ids = tokenizer([""], padding="max_length", max_length=size.model_max_length, return_tensors="pt")
    logger.info(
        "rendered %d scenes, %d captions in %.1f s",
        len(pool.images),
        bank.shape[0] * bank.shape[1],
        time.perf_counter() - started,
    )

    training_started = time.perf_counter()
    vae_report = train_vae(vae, pool, config, device, budget_s=config.time_budget_s * config.vae_share)
    latents = encode_pool(vae, pool)
    remaining = config.time_budget_s - (time.perf_counter() - training_started)
    unet_report = train_unet(
        unet,
        text_encoder,
        latents,
        bank,
        pool,
        config,
        device,
        max(remaining, 1.0),
        empty_ids.input_ids.to(device),
    )
    del pool, latents, bank

    output_dir = Path(output_dir)
    for module in (text_encoder, unet, vae):
        # fp16: a few MB on disk; load_base reads them back as fp32. torch's own `to`, as load_base does.
        torch.nn.Module.to(module, "cpu", torch.float16)
    save_model_dir(output_dir, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae)

    report = {
        "seed": config.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameters,
        "vae": vae_report,
        "unet": unet_report,
        "config": asdict(config),
    }
    _write_report(output_dir, report)  # already now, so a failed evaluation still leaves the training facts

    report.update(evaluate_toy_base(output_dir, config))
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    _write_report(output_dir, report)
    return report


def _write_report(output_dir: Path, report: dict) -> None:
    with atomic_write(output_dir / REPORT_FILE) as handle:
        json.dump(report, handle, indent=2)
