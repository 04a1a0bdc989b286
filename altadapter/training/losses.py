"""The training objective on the frozen UNet: the diffusion loss, its Min-SNR weights, the held-out loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.training_utils import compute_snr

from altadapter.model import AltDiffusionBase
from altadapter.training.caches import LatentCache

VALIDATION_TIMESTEPS = 8  # fixed timesteps per held-out image, spread over the schedule


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets."""
    weights = torch.clamp(snr, max=gamma) / snr
    if prediction_type == "v_prediction":
        weights = weights * snr / (snr + 1)  # Min-SNR for v targets (Hang et al., eq. 9)
    return weights


def diffusion_loss(
    base: AltDiffusionBase,
    noise_scheduler,
    conditioning: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The latent-diffusion objective on the frozen UNet: epsilon or v prediction, optional Min-SNR weights."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = base.unet(noisy, timesteps, encoder_hidden_states=conditioning.to(base.dtype)).sample
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
    weights = min_snr_weights(
        compute_snr(noise_scheduler, timesteps), snr_gamma, noise_scheduler.config.prediction_type
    )
    per_item = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3)
    )
    return (per_item * weights).mean()


@torch.no_grad()
def validation_loss(
    base: AltDiffusionBase,
    noise_scheduler,
    cache: LatentCache,
    encode: Callable[[Sequence[str]], torch.Tensor],
    *,
    seed: int,
    batch_size: int,
) -> float:
    """Held-out denoising loss at fixed timesteps with fixed noise: comparable across runs and adapters.

    `encode` turns captions into conditioning (B, L, D): the original model's, or through an adapter.
    Batches hold pictures of one size (one bucket) at a time.
    """
    total, count = 0.0, 0
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.linspace(steps * 0.05, steps * 0.95, VALIDATION_TIMESTEPS).long()
    captions = [record.caption for record in cache.records]
    pairs_per_size = [[(i, t) for i in group for t in timesteps.tolist()] for group in cache.groups()]
    chunks = [pairs[s : s + batch_size] for pairs in pairs_per_size for s in range(0, len(pairs), batch_size)]
    for chunk in chunks:
        indices = torch.tensor([i for i, _ in chunk])
        latents = cache.mean(indices).to(base.device, base.dtype)
        noise = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed + 7 * i + t))
                for i, t in chunk
            ]
        ).to(base.device, base.dtype)
        conditioning = encode([captions[i] for i, _ in chunk])
        t = torch.tensor([t for _, t in chunk], device=base.device)
        total += diffusion_loss(base, noise_scheduler, conditioning, latents, noise, t).item() * len(chunk)
        count += len(chunk)
    return total / count
