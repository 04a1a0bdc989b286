"""How far an adapter can steer the frozen toy encoder at all, without the UNet: a probe diagnostic.

A linear probe is fitted to read shape colour, background colour and shape from the encoder's plain-word
captions (their conditioning averaged over tokens, as the base trainer's text phase reads it). Then an
adapter is trained, through that frozen probe, to make the same read come out right for domain captions,
and scored on held-out domain prompts. This is the easiest target an adapter could have: if it cannot
make a linear probe read the domain's attributes, it cannot make the UNet draw them either. It separates
what the encoder lets an adapter express from how well the diffusion loss teaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.prompt import (
    PromptAdapter,
    PromptConfig,
    init_deep_prompts,
    prompt_attention_mask,
)
from altadapter.adapters.registry import kind_of
from altadapter.encoding import encode_tokens, tokenize
from altadapter.model import AltDiffusionBase
from toyworld import captions, world
from toyworld.text_pretraining import ATTRIBUTE_SIZES, masked_mean, probe_loss

# Each combination's index in `world.all_attributes()`, the row `text_pretraining.probe_loss` reads.
COMBO_INDEX = {attrs: index for index, attrs in enumerate(world.all_attributes())}


def combo_indices(attrs: Sequence[world.Attributes]) -> torch.Tensor:
    """Index of each scene's combination: (N,)."""
    return torch.tensor([COMBO_INDEX[a] for a in attrs])


def probe_scores(logits: torch.Tensor, combos: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The probe's cross-entropy on logits (N, 15), and its accuracy per attribute and all three."""
    loss, hits = probe_loss(logits, combos)  # hits (N, 3)
    scores = dict(zip(world.ATTRIBUTE_NAMES, hits.float().mean(dim=0).tolist(), strict=True))
    scores["all"] = hits.all(dim=1).float().mean().item()
    return loss, scores


def pooled_conditioning(
    base: AltDiffusionBase, texts: Sequence[str], adapter: torch.nn.Module | None
) -> torch.Tensor:
    """The conditioning averaged over real tokens (prompt vectors included): (N, D)."""
    kind = kind_of(adapter) if adapter is not None else None
    if kind is not None and not kind.acts_on_output:
        ids, mask = kind.tokenize(base, texts, adapter.config, warn=False)
        conditioning = kind.encode(base, ids, mask, adapter).float()  # (N, T + P, D)
        return masked_mean(
            conditioning, prompt_attention_mask(mask, kind.positions_before_text(adapter.config))
        )
    ids, mask = tokenize(base, texts, base.info.model_max_length, warn=False)
    with torch.no_grad():
        conditioning = encode_tokens(base, ids, mask).float()
    if adapter is not None:
        conditioning = adapter(conditioning)
    return masked_mean(conditioning, mask)


def fit_plain_probe(base: AltDiffusionBase, steps: int = 500) -> tuple[torch.nn.Linear, dict[str, float]]:
    """A linear probe on every plain caption of every combination; returns it and its training accuracy."""
    plain = [(t.format(**a.to_dict()), a) for a in world.all_attributes() for t in captions.BASE_TEMPLATES]
    features = pooled_conditioning(base, [text for text, _ in plain], None)
    targets = combo_indices([attrs for _, attrs in plain])
    probe = torch.nn.Linear(features.shape[1], sum(ATTRIBUTE_SIZES))
    torch.nn.init.zeros_(probe.weight)  # a convex fit: from zero it ends the same whatever the RNG state
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, scores = probe_scores(probe(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.requires_grad_(False), scores


def steer(
    base: AltDiffusionBase,
    probe: torch.nn.Module,
    adapter: MLPAdapter | PromptAdapter,
    train: Sequence[world.Prompt],
    heldout: Sequence[world.Prompt],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Train `adapter` so the frozen probe reads each domain caption's attributes; score it on `heldout`."""
    optimizer = torch.optim.Adam(adapter.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [train[i] for i in torch.randint(len(train), (batch_size,), generator=generator).tolist()]
        features = pooled_conditioning(base, [p.text for p in batch], adapter)
        loss, _ = probe_scores(probe(features), combo_indices([p.attrs for p in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        features = pooled_conditioning(base, [p.text for p in heldout], adapter)
        return probe_scores(probe(features), combo_indices([p.attrs for p in heldout]))[1]


def steering_adapters(
    base: AltDiffusionBase, num_layers: int, num_prompts: int, seed: int, reparam_dim: int = 64
) -> dict:
    """The demo's two write-up adapters, untrained (the MLP at identity, the prompt vectors from real
    words), and the prompt kind's two options where shallow prompts are weak: prefix-tuning's
    reparameterisation and deep prompts (P-tuning v2) at every encoder layer."""
    generator = torch.Generator().manual_seed(seed)
    words = base.text_encoder.get_input_embeddings().weight.detach().float()
    rows = torch.randint(4, len(words), (num_prompts,), generator=generator)  # past <s>, <pad>, </s>, <unk>
    shallow = PromptConfig(dim=base.info.hidden_size, num_prompts=num_prompts)
    deep = PromptAdapter(replace(shallow, depth=base.info.num_layers), words[rows])
    plain = [t.format(**a.to_dict()) for a in world.all_attributes() for t in captions.BASE_TEMPLATES]
    init_deep_prompts(base, deep, plain[:64])
    return {
        "mlp": MLPAdapter(MLPConfig(dim=base.info.project_dim, num_layers=num_layers)),
        "prompt": PromptAdapter(shallow, words[rows]),
        "prompt, reparameterised": PromptAdapter(replace(shallow, reparam_dim=reparam_dim), words[rows]),
        "prompt, deep": deep,
    }
