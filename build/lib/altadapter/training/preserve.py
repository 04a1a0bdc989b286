"""Keep what the base knew: a penalty that holds general prompts' conditioning near the original's.

With `--preserve_weight W`, every step adds W * the mean squared difference between the tuned and the
original conditioning of a few general prompts (m9 reads nine languages, so the default list does too).
Every position the UNet attends to is held, the prompt vectors' own outputs included: those are compared
with the positions they push out (docs/DESIGN.md tells why).
"""

from __future__ import annotations

from pathlib import Path

import torch

from altadapter.data.prompts import read_prompts

DEFAULT_PRESERVE_PROMPTS = (
    "a photo of a dog running on the beach",
    "an oil painting of a lighthouse at sunset",
    "a bowl of fresh fruit on a wooden table",
    "a city street at night in the rain, neon lights",
    "a portrait of an old man with a beard, studio lighting",
    "a snowy mountain landscape with a frozen lake",
    "一只在草地上奔跑的小猫",
    "黑暗精灵公主，非常详细，幻想，数字绘画，概念艺术，插图",
    "夕暮れの海辺を歩く女性、水彩画",
    "桜の木の下の神社",
    "눈 내리는 밤의 작은 마을",
    "un château médiéval sur une colline, peinture à l'huile",
    "un perro durmiendo junto a la chimenea",
    "ein rotes Fahrrad vor einer Backsteinmauer",
    "красная площадь зимой, фотография",
    "una gondola a Venezia al tramonto",
    "um farol na costa durante uma tempestade",
    "قطة بيضاء تجلس على النافذة",
)


def read_preserve_prompts(path: str | Path | None) -> list[str]:
    """General prompts from a file (one per line), or the built-in multilingual list."""
    if path is None:
        return list(DEFAULT_PRESERVE_PROMPTS)
    return read_prompts(path, flag="--preserve_prompts")


def text_positions(original: torch.Tensor, tuned: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """The tuned positions that hold `<s>` and text, aligned with the original's first positions."""
    if num_prompts == 0:
        return tuned
    kept = torch.cat([tuned[:, :1], tuned[:, 1 + num_prompts :]], dim=1)  # drop P_1..P_n after <s>
    return kept[:, : original.shape[1]]


def preservation_loss(original: torch.Tensor, tuned: torch.Tensor, num_prompts: int = 0) -> torch.Tensor:
    """Mean squared distance between tuned and original conditioning over aligned positions, in fp32.

    original (B, L, D); tuned (B, L', D) with `num_prompts` (P) vector outputs after `<s>`. `<s>` and the
    text are compared with the original's first positions; the vector outputs with the positions they push
    out, where the length stays L (m9: 512 of 512), and with the original's last position, padding, where
    the sequence grew instead (77 + P positions on AltDiffusion and m18).
    """
    if num_prompts == 0:
        return torch.nn.functional.mse_loss(tuned.float(), original.float())
    text = text_positions(original, tuned, num_prompts)  # (B, min(L, L' - P), D)
    kept = text.shape[1]
    targets = original[:, kept : kept + num_prompts]  # the pushed-out positions; none if the sequence grew
    missing = num_prompts - targets.shape[1]
    targets = torch.cat([targets, original[:, -1:].expand(-1, missing, -1)], dim=1)  # (B, P, D)
    aligned = torch.cat([text, tuned[:, 1 : 1 + num_prompts]], dim=1)
    return torch.nn.functional.mse_loss(aligned.float(), torch.cat([original[:, :kept], targets], 1).float())
