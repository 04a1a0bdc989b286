"""Where and in what precision the frozen base runs: device and dtype names as the flags spell them."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """A device flag: "auto" means cuda when there is one, else cpu; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name}: {error}; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype flag: "auto" means fp16 on cuda (m9 in fp32 needs twice the memory) and fp32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The flag spelling of a dtype: torch.bfloat16 -> "bf16"."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def vae_scale_factor(block_out_channels: tuple[int, ...] | list[int]) -> int:
    """Pixels per latent along a side: the VAE halves the size once per block after the first (8 on SD)."""
    return 2 ** (len(block_out_channels) - 1)
