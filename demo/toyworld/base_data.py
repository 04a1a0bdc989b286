"""The base trainer's data: rendered scenes, tokenized captions per attribute combination, cached outputs.

Captions are tokenized (and, for the frozen encoder, encoded) once, so a training step never waits for the
tokenizer or the encoder.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch

from altadapter.encoding import xlmr_position_ids
from toyworld import captions, world
from toyworld.base_config import ToyBaseConfig


@dataclass
class ScenePool:
    """Rendered scenes and the index of each one's attribute combination in `world.all_attributes()`."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    combos: torch.Tensor  # (N,) int64

    @staticmethod
    def render(n: int, size: int, rng: np.random.Generator, device: torch.device) -> ScenePool:
        combos = world.all_attributes()
        index = rng.integers(len(combos), size=n)
        images = world.render_batch([combos[i] for i in index], size, rng, device=device)
        return ScenePool(images.permute(0, 3, 1, 2).contiguous(), torch.as_tensor(index, device=device))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images at `index` as floats in [-1, 1], the VAE's range: (B, 3, H, W)."""
        return self.images[index].float() / 127.5 - 1


@dataclass
class CaptionBank:
    """Tokenized captions per attribute combination, tokenized once so a step never waits for the tokenizer.

    `plain`: every base template for each combination, (90, 6, T); `varied`: `captions_per_combo` captions
    with filler phrases, (90, K, T), and their position ids, (90, K, T), a share of them shifted right.
    """

    plain: torch.Tensor
    varied: torch.Tensor
    varied_positions: torch.Tensor
    empty: torch.Tensor  # (1, T): the unconditional caption
    words: torch.Tensor  # (V,): the token id of every word of the toy vocabulary, domain tags included
    specials: torch.Tensor  # (4,): the ids of <s>, </s>, <pad> and <mask>

    def to(self, device: torch.device) -> CaptionBank:
        return CaptionBank(*(tensor.to(device) for tensor in asdict(self).values()))


def xlmr_positions(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """XLM-R's position ids for token ids (padding is `pad_id`): (B, T)."""
    return xlmr_position_ids((input_ids != pad_id).long(), pad_id)


def build_caption_bank(tokenizer, config: ToyBaseConfig, rng: np.random.Generator) -> CaptionBank:
    """The plain captions of every combination and `captions_per_combo` varied ones (fillers, shifts)."""
    combos = world.all_attributes()
    tokenize = functools.partial(
        tokenizer,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    plain = [template.format(**attrs.to_dict()) for attrs in combos for template in captions.BASE_TEMPLATES]
    varied = [
        captions.base_caption(attrs, rng, max_filler=config.max_filler)
        for attrs in combos
        for _ in range(config.captions_per_combo)
    ]
    varied_ids = tokenize(varied).input_ids
    generator = torch.Generator().manual_seed(config.seed)
    positions = shifted_positions(varied_ids, tokenizer.pad_token_id, config.position_shift, generator)
    return CaptionBank(
        plain=tokenize(plain).input_ids.view(len(combos), len(captions.BASE_TEMPLATES), -1),
        varied=varied_ids.view(len(combos), config.captions_per_combo, -1),
        varied_positions=positions.view(len(combos), config.captions_per_combo, -1),
        empty=tokenize([""]).input_ids,
        words=torch.tensor(tokenizer.convert_tokens_to_ids(["▁" + word for word in captions.TOY_VOCABULARY])),
        specials=torch.tensor(
            [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id]
        ),
    )


def random_word_sequences(bank: CaptionBank, batch: int, length: int, generator) -> torch.Tensor:
    """Token ids (B, T) of `<s>` + 1..T-2 words drawn from the whole vocabulary + `</s>` + padding."""
    device = bank.words.device
    bos, eos, pad, _ = bank.specials.tolist()
    counts = torch.randint(1, length - 1, (batch,), device=device, generator=generator)  # words per row
    words = bank.words[torch.randint(len(bank.words), (batch, length), device=device, generator=generator)]
    column = torch.arange(length, device=device)
    ids = torch.where(column <= counts[:, None], words, torch.full_like(words, pad))
    ids[:, 0] = bos
    return ids.scatter(1, (counts + 1)[:, None], eos)


def shifted_positions(input_ids: torch.Tensor, pad_id: int, share: float, generator) -> torch.Tensor:
    """XLM-R position ids, with the text of a random `share` of rows moved right by a random gap after <s>.

    Real XLM-R learned every one of its positions in pre-training; the toy one only sees short captions.
    The gap is where the prompt adapter puts its vectors, so the text still reads at the positions it lands on.
    """
    mask = (input_ids != pad_id).long()  # (B, T)
    positions = xlmr_positions(input_ids, pad_id)
    room = input_ids.shape[1] - mask.sum(dim=1)  # free positions after the caption
    rows = torch.rand(input_ids.shape[0], device=input_ids.device, generator=generator)
    shift = (torch.rand(rows.shape, device=rows.device, generator=generator) * (room + 1)).long()
    shift = torch.where(rows < share, shift, torch.zeros_like(shift))
    after_bos = torch.arange(input_ids.shape[1], device=input_ids.device) >= 1
    return positions + shift[:, None] * mask * after_bos


@dataclass
class ConditioningBank:
    """The frozen encoder's output for every caption of a `CaptionBank`: (90, n, T, D) and empty (1, T, D)."""

    plain: torch.Tensor
    varied: torch.Tensor
    empty: torch.Tensor

    @staticmethod
    @torch.no_grad()
    def encode(text_encoder, bank: CaptionBank, batch_size: int = 512) -> ConditioningBank:
        pad_id = text_encoder.config.pad_token_id

        def run(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            flat_ids, flat_positions = ids.reshape(-1, ids.shape[-1]), positions.reshape(-1, ids.shape[-1])
            parts = [
                text_encoder(flat_ids[i : i + batch_size], position_ids=flat_positions[i : i + batch_size])[0]
                for i in range(0, len(flat_ids), batch_size)
            ]
            return torch.cat(parts).view(*ids.shape, -1)

        return ConditioningBank(
            plain=run(bank.plain, xlmr_positions(bank.plain.flatten(0, 1), pad_id).view_as(bank.plain)),
            varied=run(bank.varied, bank.varied_positions),
            empty=run(bank.empty, xlmr_positions(bank.empty, pad_id)),
        )
