"""What a toy-base run depends on: the model's size and every setting of the recipe, with its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from altadapter.testing.tiny_models import ModelSize

# 32 px pictures, 8x8x4 latents: a size that trains on 2 CPU cores. 64 token positions hold the longest
# domain caption (46 tokens) beside the demo's 16 prompt vectors.
TOY_SIZE = ModelSize(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    project_dim=64,
    model_max_length=64,
    unet_channels=(32, 64),
    unet_layers_per_block=1,
    attention_head_dim=4,  # diffusers reads it as the number of heads: 4 heads of 8 / 16 channels
    vae_channels=(32, 64, 64),
    vae_layers_per_block=1,
    latent_channels=4,
    sample_size=32,
)
REPORT_FILE = "training_report.json"
SAMPLES_FILE = "samples.png"


@dataclass(frozen=True)
class ToyBaseConfig:
    """Everything a toy-base run depends on; defaults train on 2 CPU cores in about 40 minutes."""

    seed: int = 0
    size: ModelSize = TOY_SIZE
    pool_size: int = 20_000  # rendered scenes; each is seen with a fresh caption every time
    captions_per_combo: int = 32  # varied captions (filler phrases, shifted text) per combination
    max_filler: int = 6  # neutral phrases mixed into a varied caption, so long captions are familiar
    position_shift: float = 0.5  # share of varied captions moved to later positions (where prompt vectors go)
    # All three training phases together: a cap for slow machines. On 2 idle cores the step counts end the
    # phases first (about 8 + 3 + 24 minutes).
    time_budget_s: float = 2400.0
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # per latent element, against the per-pixel MSE
    text_steps: int = 1000
    text_batch_size: int = 256
    text_lr: float = 2e-3
    # Weight of masked-language modelling beside the probe in the text phase; 0 (off) is the committed base's
    # recipe. A research option: it makes the encoder use context, which prompt vectors need to steer it
    # (docs/steering_research.md).
    masked_lm_weight: float = 0.0
    unet_steps: int = 9000
    batch_size: int = 64
    lr: float = 1e-3
    varied_share: float = 0.25  # share of UNet captions from the varied bank; the rest are plain captions
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # empty captions, which classifier-free guidance needs
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    ema_decay: float = 0.999
    log_every: int = 250
    eval_combos: int = 90  # base-world prompts: every template with this many combinations (all 90)
    eval_steps: int = 30
    guidance_scale: float = 5.0
    eval_batch_size: int = 90
    round_trip_scenes: int = 512  # fresh scenes through the saved VAE, for its MSE and attribute accuracy
    vae_from: str = ""  # a toy base folder whose VAE to reuse instead of training one
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = ("pool_size", "captions_per_combo", "batch_size", "vae_batch_size", "text_batch_size")
        for name in (*positive, "eval_combos", "eval_batch_size", "eval_steps", "round_trip_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("caption_dropout", "position_shift", "varied_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.masked_lm_weight < 0:
            raise ValueError(f"masked_lm_weight must be at least 0, got {self.masked_lm_weight}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")
