"""The base trainer's text phase: teach the toy encoder the world's words, then freeze it."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from toyworld import captions, world
from toyworld.base_config import ToyBaseConfig
from toyworld.base_data import (
    CaptionBank,
    random_word_sequences,
    shifted_positions,
    xlmr_positions,
)
from toyworld.clock import Clock, schedule

logger = logging.getLogger(__name__)


# Class index of each combination's fg, bg and shape, in `world.all_attributes()` order: (90, 3).
ATTRIBUTE_TARGETS = torch.tensor(
    [
        [world.ATTRIBUTE_VALUES[name].index(getattr(attrs, name)) for name in world.ATTRIBUTE_NAMES]
        for attrs in world.all_attributes()
    ]
)
ATTRIBUTE_SIZES = [len(world.ATTRIBUTE_VALUES[name]) for name in world.ATTRIBUTE_NAMES]


def mean_over_tokens(conditioning: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The conditioning averaged over a caption's tokens (padding left out): (B, T, D) -> (B, D)."""
    return masked_mean(conditioning, input_ids != pad_id)


def masked_mean(conditioning: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The conditioning averaged over the positions `mask` (B, T) marks: (B, T, D) -> (B, D)."""
    weights = mask.to(conditioning.dtype)[..., None]
    return (conditioning * weights).sum(dim=1) / weights.sum(dim=1)


def probe_loss(logits: torch.Tensor, combos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the probe's fg / bg / shape logits (B, 15), and which attributes of each row it
    reads right (B, 3), in `world.ATTRIBUTE_NAMES` order."""
    targets = ATTRIBUTE_TARGETS.to(combos.device)[combos]  # (B, 3)
    losses, right = [], []
    for column, part in enumerate(logits.split(ATTRIBUTE_SIZES, dim=1)):
        losses.append(F.cross_entropy(part.float(), targets[:, column]))
        right.append(part.argmax(dim=1) == targets[:, column])
    return sum(losses), torch.stack(right, dim=1)


@torch.no_grad()
def text_signals(text_encoder, probe: torch.nn.Module, bank: CaptionBank) -> dict:
    """What the encoder makes of every plain caption: the probe's accuracy per template, and the spread.

    spread: mean pairwise distance of the conditionings of the 90 combinations (first template), over
    their mean norm. A collapsing encoder drives it to 0 while the diffusion loss keeps falling.
    """
    combos, templates, length = bank.plain.shape
    ids = bank.plain.reshape(-1, length)
    conditioning = text_encoder(ids, position_ids=xlmr_positions(ids, text_encoder.config.pad_token_id))[0]
    _, hits = probe_loss(
        probe(mean_over_tokens(conditioning, ids, text_encoder.config.pad_token_id)),
        torch.arange(combos).repeat_interleave(templates).to(ids.device),
    )
    per_template = hits.all(dim=1).view(combos, templates).float().mean(dim=0).tolist()
    first = conditioning.view(combos, templates, -1)[:, 0]
    spread = torch.pdist(first.float()).mean() / first.float().norm(dim=1).mean()
    return {
        "probe_accuracy": dict(zip(captions.BASE_TEMPLATES, per_template, strict=True)),
        "spread": spread.item(),
    }


def token_identity_loss(
    text_encoder, head: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of reading every token's own id back from its output, padding left out.

    Real XLM-R was pre-trained (masked language modelling) on text holding every word of its vocabulary, so
    its outputs keep each word's identity, a word it never saw beside a picture included. Random sequences
    of the whole toy vocabulary, domain tags among them, teach the toy encoder the same; without this, the
    probe alone teaches it to drop every word that names no colour or shape, and no adapter can read the
    domain's words back from its output.
    """
    outputs = text_encoder(ids, position_ids=positions)[0]
    real = ids != text_encoder.config.pad_token_id
    return F.cross_entropy(head(outputs[real]).float(), ids[real])


def masked_lm_loss(
    text_encoder,
    head: torch.nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    bank: CaptionBank,
    generator: torch.Generator,
    rate: float = 0.15,
) -> torch.Tensor:
    """BERT's masked-language-modelling loss: `rate` of the words corrupted (80% to <mask>, 10% to a random
    word, 10% kept) and each read back from its output by `head`.

    A word can then only be recovered from the words around it, which is how real XLM-R learned to let
    context change what a word means, and what a prefix of prompt vectors needs in order to steer it.
    """
    bos, eos, pad, mask_id = bank.specials.tolist()
    words = (ids != bos) & (ids != eos) & (ids != pad)
    draw = torch.rand(ids.shape, device=ids.device, generator=generator)
    chosen = words & (draw < rate)
    how = torch.rand(ids.shape, device=ids.device, generator=generator)
    random_words = bank.words[
        torch.randint(len(bank.words), ids.shape, device=ids.device, generator=generator)
    ]
    corrupted = torch.where(chosen & (how < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_words, corrupted)
    outputs = text_encoder(corrupted, position_ids=positions)[0]
    if not chosen.any():
        return outputs.sum() * 0  # keeps the graph whole on a batch that drew no word
    return F.cross_entropy(head(outputs[chosen]).float(), ids[chosen])


def train_text_encoder(
    text_encoder, bank: CaptionBank, config: ToyBaseConfig, device, budget_s: float
) -> dict:
    """Teach the encoder the world's words before the UNet sees it, then freeze it.

    A linear probe reads fg, bg and shape from the conditioning averaged over tokens, so every token's
    output must carry what its word means in its caption ("red" in "a red circle on a blue background" is the
    shape's colour). AltDiffusion's encoder was likewise trained first (AltCLIP) and frozen while its UNet
    learned: a frozen encoder cannot collapse under the diffusion loss, and its outputs can be cached.
    """
    pad_id = text_encoder.config.pad_token_id
    width, vocab_size = text_encoder.config.project_dim, text_encoder.config.vocab_size
    probe = torch.nn.Linear(width, sum(ATTRIBUTE_SIZES)).to(device)
    identity = torch.nn.Linear(width, vocab_size).to(device)
    text_encoder.to(device).train().requires_grad_(True)
    heads = [probe, identity]
    if config.masked_lm_weight > 0:  # its own head: reading a masked word is a different task from identity
        masked_lm = torch.nn.Linear(width, vocab_size).to(device)
        heads.append(masked_lm)
    params = [*text_encoder.parameters(), *(p for head in heads for p in head.parameters())]
    optimizer = torch.optim.AdamW(params, lr=config.text_lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(config.seed + 3)
    clock, step, curve = Clock(config.text_steps, budget_s), 0, []
    while clock.progress(step) < 1:
        for group in optimizer.param_groups:
            group["lr"] = config.text_lr * schedule(clock.progress(step), 0.05)
        b = config.text_batch_size
        combos = torch.randint(len(bank.plain), (b,), device=device, generator=generator)
        plain = bank.plain[
            combos, torch.randint(bank.plain.shape[1], (b,), device=device, generator=generator)
        ]
        varied = bank.varied[
            combos, torch.randint(bank.varied.shape[1], (b,), device=device, generator=generator)
        ]
        use_varied = torch.rand(b, device=device, generator=generator) < 0.5
        ids = torch.where(use_varied[:, None], varied, plain)
        shifted = shifted_positions(ids, pad_id, config.position_shift, generator)
        positions = torch.where(use_varied[:, None], shifted, xlmr_positions(ids, pad_id))
        conditioning = text_encoder(ids, position_ids=positions)[0]
        loss, hits = probe_loss(probe(mean_over_tokens(conditioning, ids, pad_id)), combos)
        right = hits.all(dim=1)
        words = random_word_sequences(bank, b // 2, ids.shape[1], generator)
        word_positions = shifted_positions(words, pad_id, config.position_shift, generator)
        identity_loss = token_identity_loss(text_encoder, identity, words, word_positions)
        loss = loss + identity_loss
        if config.masked_lm_weight > 0:
            loss = loss + config.masked_lm_weight * (
                masked_lm_loss(text_encoder, masked_lm, ids, positions, bank, generator)
                + masked_lm_loss(text_encoder, masked_lm, words, word_positions, bank, generator)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        if step % config.log_every == 0 or clock.progress(step) >= 1:
            text_encoder.eval()
            signals = text_signals(text_encoder, probe, bank)
            text_encoder.train()
            worst = min(signals["probe_accuracy"].values())
            curve.append(
                {"step": step, "loss": loss.item(), "worst_template": worst, "spread": signals["spread"]}
            )
            logger.info(
                "text step %d  loss %.4f  batch all-right %.2f  worst template %.3f  spread %.3f  %s",
                step,
                loss.item(),
                right.float().mean().item(),
                worst,
                signals["spread"],
                clock.status(step),
            )
    text_encoder.eval().requires_grad_(False)
    return {"steps": step, "seconds": round(clock.elapsed(), 1), "curve": curve, **signals}
