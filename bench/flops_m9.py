"""FLOPs of each part of a training step at the real AltDiffusion-m9 size, counted on the meta device.

    python bench/flops_m9.py --resolution 512 --batch_size 1

No weights and no GPU: the published m9 configs (altadapter/testing/configs/altdiffusion-m9) are instantiated on
torch's meta device and `torch.utils.flop_counter` counts the matmuls and convolutions. The output says what
caching can save at equal precision: naive/optimised = (VAE encode + encoder + UNet) / (what remains).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesConfig,
    RobertaSeriesModelWithTransformation,
)
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altadapter.testing.tiny_models import read_published_config

M9 = "altdiffusion-m9"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=512, help="image size in pixels")
    parser.add_argument("--batch_size", type=int, default=1, help="images per step")
    parser.add_argument("--out", default=None, help="write the counts as JSON here")
    return parser.parse_args(argv)


def gflops(step: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def main(args: argparse.Namespace) -> dict:
    batch, size = args.batch_size, args.resolution
    text_config = RobertaSeriesConfig(**read_published_config(M9, "text_encoder"))
    tokens = text_config.max_position_embeddings - 2
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(read_published_config(M9, "unet")).requires_grad_(False)
        vae = AutoencoderKL.from_config(read_published_config(M9, "vae")).requires_grad_(False)
        encoder = RobertaSeriesModelWithTransformation(text_config).requires_grad_(False)
        pixels = torch.empty(batch, 3, size, size)
        ids = torch.ones(batch, tokens, dtype=torch.long)
        latents = torch.empty(batch, 4, size // 8, size // 8)
        timesteps = torch.zeros(batch, dtype=torch.long)
        conditioning = torch.empty(batch, tokens, text_config.project_dim, requires_grad=True)
        embeds = torch.empty(batch, tokens, text_config.hidden_size, requires_grad=True)

        def unet_to_conditioning() -> None:
            sample = unet(latents, timesteps, encoder_hidden_states=conditioning).sample
            sample.sum().backward(inputs=[conditioning])

        def encoder_to_embeddings() -> None:
            encoder(inputs_embeds=embeds, return_dict=True)[0].sum().backward(inputs=[embeds])

        counts = {
            "vae_encode": gflops(lambda: vae.encode(pixels)),
            "text_encoder_forward": gflops(lambda: encoder(ids, return_dict=True)),
            "text_encoder_forward_backward": gflops(encoder_to_embeddings),
            "unet_forward_backward_to_conditioning": gflops(unet_to_conditioning),
        }
    unet_cost, vae_cost = counts["unet_forward_backward_to_conditioning"], counts["vae_encode"]
    prompt_floor = unet_cost + counts["text_encoder_forward_backward"]
    result = {
        "resolution": size,
        "batch_size": batch,
        "tokens": tokens,
        "gflops": {k: round(v, 1) for k, v in counts.items()},
        "mlp_naive_over_optimised_equal_precision": round(
            (vae_cost + counts["text_encoder_forward"] + unet_cost) / unet_cost, 2
        ),
        "prompt_naive_over_optimised_equal_precision": round((vae_cost + prompt_floor) / prompt_floor, 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main(parse_args())
