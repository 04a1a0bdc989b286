"""Any adapter inside a stock diffusers `AltDiffusionPipeline`, rendered through the pipeline's own `__call__`.

`attach_adapter(pipe, path)` gives the pipeline an `encode_prompt` of its own that encodes the prompt and
the negative prompt through the adapter (as the project's renderer does), then hands the embeddings to the
pipeline's own `encode_prompt` for the rest (copies per image, dtype, device). `detach_adapter` takes it
away, with anything the adapter left in the text encoder, so the pipeline is the original again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from altadapter.adapter_io import AdapterMetadata, load_adapter
from altadapter.adapters import kind_of
from altadapter.adapters.conditioning import encode_text
from altadapter.model import AltDiffusionBase, base_of_pipeline

_ATTACHED = "_altadapter_attached"


@dataclass
class _Attached:
    adapter: nn.Module
    base: AltDiffusionBase
    metadata: AdapterMetadata


def attach_adapter(
    pipe, path: str | Path, scale: float = 1.0, *, allow_other_base: bool = False
) -> AdapterMetadata:
    """Make `pipe(prompt, negative_prompt=...)` render with the adapter file at `path`, at strength `scale`.

    The file is checked against the pipeline's components as the scripts check it against `--model_path`.
    An adapter attached before is detached first. Returns the file's metadata.
    """
    detach_adapter(pipe)
    base = base_of_pipeline(pipe)
    adapter, metadata = load_adapter(path, base.info, allow_other_base=allow_other_base)
    adapter.to(pipe.text_encoder.device)
    setattr(pipe, _ATTACHED, _Attached(adapter, base, metadata))
    stock = type(pipe).encode_prompt.__get__(pipe)
    pipe.encode_prompt = functools.partial(_encode_prompt, stock, base, adapter, scale)
    return metadata


def detach_adapter(pipe) -> None:
    """Give the pipeline back its own `encode_prompt` and its text encoder as it was; no-op if none."""
    attached = getattr(pipe, _ATTACHED, None)
    if attached is None:
        return
    del pipe.encode_prompt  # the instance attribute; the class's method shows through again
    kind_of(attached.adapter).detach(attached.adapter, attached.base)
    delattr(pipe, _ATTACHED)


@torch.no_grad()
def _encode_prompt(
    stock,
    base: AltDiffusionBase,
    adapter: nn.Module,
    scale: float,
    prompt,
    device,
    num_images_per_prompt,
    do_classifier_free_guidance,
    negative_prompt=None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
):
    """The stock `encode_prompt`, with prompt and negative prompt encoded through the adapter."""
    if clip_skip is not None:
        raise ValueError("clip_skip cannot be combined with an attached adapter; detach it or drop clip_skip")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if prompt_embeds is None:
        prompt_embeds = encode_text(base, prompts, adapter, scale=scale)
    if do_classifier_free_guidance and negative_prompt_embeds is None:
        count = prompt_embeds.shape[0]
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt or ""] * count
        else:
            negatives = list(negative_prompt)
        negative_prompt_embeds = encode_text(base, negatives, adapter, scale=scale)
    return stock(
        None,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        lora_scale=lora_scale,
    )
