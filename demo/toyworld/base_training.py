"""Train the demo's toy base from scratch on the toy world in three phases, save it, evaluate it.

1. VAE: reconstruction + a small KL term, until its round trip reads back what was drawn.
2. Text encoder: taught the world's words with a linear probe (`toy.text_pretraining`), then frozen.
3. UNet: epsilon prediction over m9's DDPM schedule on the frozen encoder's cached outputs, 10% empty
   captions for classifier-free guidance, Min-SNR weights, EMA weights saved.

The saved folder is evaluated through `load_base` and the stock pipeline (`toy.base_eval`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from altadapter.devices import resolve_device
from altadapter.testing.tiny_models import (
    SCHEDULER_CONFIG,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    save_model_dir,
)
from altadapter.training.losses import min_snr_weights
from toyworld import captions
from toyworld.base_config import ToyBaseConfig
from toyworld.base_data import (
    ConditioningBank,
    ScenePool,
    build_caption_bank,
)
from toyworld.base_eval import evaluate_toy_base, write_report
from toyworld.clock import Budget, Clock, schedule
from toyworld.text_pretraining import train_text_encoder

logger = logging.getLogger(__name__)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimiser state stay fp32); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_vae(vae, pool: ScenePool, config: ToyBaseConfig, device: torch.device, budget_s: float) -> dict:
    """Fit the VAE to the pool; set its scaling factor so scaled latents have unit variance."""
    vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(config.seed)
    clock, step, losses = Clock(config.vae_steps, budget_s), 0, []
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
            logger.info("vae step %d  mse %.4f  %s", step, np.mean(losses[-10:]), clock.status(step))
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


def train_unet(
    unet,
    conditionings: ConditioningBank,
    latents,
    pool: ScenePool,
    config: ToyBaseConfig,
    device,
    budget_s: float,
) -> dict:
    """Train the UNet (eps prediction) on the frozen encoder's cached outputs; leave the EMA weights in it."""
    means, stds = latents
    unet.to(device).train().requires_grad_(True)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, fused=device.type == "cuda")
    ema = [p.detach().clone() for p in params]
    alphas_cumprod = _noise_schedule().to(device)
    generator = torch.Generator(device).manual_seed(config.seed + 1)
    probe_batch = _guidance_probe(conditionings, latents, pool, device)
    clock, step, losses, curve = Clock(config.unet_steps, budget_s), 0, [], []
    warmup = config.warmup_steps / config.unet_steps
    while clock.progress(step) < 1:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule(clock.progress(step), warmup)
        b = config.batch_size
        index = torch.randint(len(means), (b,), device=device, generator=generator)
        x0 = means[index] + stds[index] * torch.randn(means[index].shape, device=device, generator=generator)
        cond = _draw_conditioning(conditionings, pool.combos[index], config, generator)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        t = torch.randint(len(alphas_cumprod), (b,), device=device, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device):
            prediction = unet(noisy, t, cond).sample
        per_sample = (prediction.float() - noise).square().mean(dim=(1, 2, 3))
        if config.min_snr_gamma > 0:
            snr = a.view(-1) / (1 - a.view(-1))
            per_sample = per_sample * min_snr_weights(snr, config.min_snr_gamma)
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
            curve.append(_log_unet_progress(unet, probe_batch, step, losses, clock, optimizer))
    with torch.no_grad():
        for param, average in zip(params, ema, strict=True):
            param.copy_(average)
    unet.eval().requires_grad_(False)
    return {
        "steps": step,
        "seconds": round(clock.elapsed(), 1),
        "final_loss": float(np.mean(losses[-10:])),
        "final_guidance_gap": _guidance_gap(unet, probe_batch),
        "samples_seen": step * config.batch_size,
        "loss_curve": curve,
    }


def _draw_conditioning(
    conditionings: ConditioningBank, combos: torch.Tensor, config: ToyBaseConfig, generator
):
    """One cached conditioning per row: a plain or (at `varied_share`) varied caption of its combination,
    or (at `caption_dropout`) the empty caption: (B, T, D)."""
    b, device = len(combos), combos.device
    plain = conditionings.plain[
        combos, torch.randint(conditionings.plain.shape[1], (b,), device=device, generator=generator)
    ]
    varied = conditionings.varied[
        combos, torch.randint(conditionings.varied.shape[1], (b,), device=device, generator=generator)
    ]
    draw = torch.rand(b, device=device, generator=generator)[:, None, None]
    cond = torch.where(draw < config.varied_share, varied, plain)
    dropped = torch.rand(b, device=device, generator=generator)[:, None, None] < config.caption_dropout
    return torch.where(dropped, conditionings.empty, cond)


def _guidance_probe(conditionings: ConditioningBank, latents, pool: ScenePool, device) -> dict:
    """A fixed batch for the conditional-vs-unconditional gap: the first 90 scenes with a plain caption of
    their own, noised to t = 500."""
    means, _ = latents
    index = torch.arange(min(90, len(means)), device=device)
    generator = torch.Generator(device).manual_seed(1234)
    a = _noise_schedule()[500].item()
    noise = torch.randn(means[index].shape, generator=generator, device=device)
    return {
        "noisy": a**0.5 * means[index] + (1 - a) ** 0.5 * noise,
        "cond": conditionings.plain[pool.combos[index], 0],
        "empty": conditionings.empty.expand(len(index), -1, -1),
    }


@torch.no_grad()
def _guidance_gap(unet, probe: dict) -> float:
    """|eps(caption) - eps(empty)| / |eps(empty)| at t = 500: near 0 means the UNet ignores its captions."""
    t = torch.full((len(probe["noisy"]),), 500, device=probe["noisy"].device)
    conditional = unet(probe["noisy"], t, probe["cond"]).sample.float()
    unconditional = unet(probe["noisy"], t, probe["empty"]).sample.float()
    return ((conditional - unconditional).norm() / unconditional.norm()).item()


def _log_unet_progress(unet, probe: dict, step: int, losses: list, clock: Clock, optimizer) -> dict:
    gap = _guidance_gap(unet, probe)
    loss = float(np.mean(losses[-10:]))
    lr = optimizer.param_groups[0]["lr"]
    logger.info(
        "unet step %d  loss %.4f  guidance gap %.3f  lr %.2e  %s", step, loss, gap, lr, clock.status(step)
    )
    return {"step": step, "loss": loss, "guidance_gap": gap, "seconds": round(clock.elapsed(), 1)}


def _noise_schedule() -> torch.Tensor:
    """alphas_cumprod of the m9 DDPM schedule (scaled_linear 0.00085..0.012 over 1000 steps): (1000,)."""
    return DDPMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod


def train_toy_base(config: ToyBaseConfig, output_dir: str | Path, *, command: str = "") -> dict:
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
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, size.model_max_length)
    text_encoder, unet, vae = build_text_encoder(size, len(tokenizer)), build_unet(size), build_vae(size)
    parameters = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae))
    }
    logger.info("device %s; parameters %s", device, parameters)

    pool = ScenePool.render(config.pool_size, size.sample_size, rng, device)
    bank = build_caption_bank(tokenizer, config, rng).to(device)
    logger.info("rendered %d scenes in %.1f s", len(pool.images), time.perf_counter() - started)

    budget = Budget(config.time_budget_s)
    if config.vae_from:
        vae = AutoencoderKL.from_pretrained(Path(config.vae_from) / "vae", torch_dtype=torch.float32).to(
            device
        )
        vae_report = {"from": str(config.vae_from), "scaling_factor": vae.config.scaling_factor}
    else:
        vae_report = train_vae(vae, pool, config, device, budget_s=budget.share(0.3))
    latents = encode_pool(vae, pool)
    text_report = train_text_encoder(text_encoder, bank, config, device, budget_s=budget.share(0.1))
    conditionings = ConditioningBank.encode(text_encoder, bank)
    unet_report = train_unet(unet, conditionings, latents, pool, config, device, budget_s=budget.left())
    del pool, latents, bank, conditionings

    output_dir = Path(output_dir)
    for module in (text_encoder, unet, vae):
        # fp16: a few MB on disk; load_base reads them back as fp32. torch's own `to`, as load_base does.
        torch.nn.Module.to(module, "cpu", torch.float16)
    save_model_dir(output_dir, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae)

    report = {
        "command": command,
        "seed": config.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameters,
        "vae": vae_report,
        "text_encoder": text_report,
        "unet": unet_report,
        "config": asdict(config),
    }
    write_report(output_dir, report)  # already now, so a failed evaluation still leaves the training facts

    report.update(evaluate_toy_base(output_dir, config))
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    write_report(output_dir, report)
    return report
