"""The text a micro-step trains on: one of a record's captions, with kohya's tag shuffling and dropout.

Every draw comes from the micro-step's own generator (`training.batches`), so captions follow --seed and a
resumed run replays them. Nothing is drawn for what is off: with a single caption per record and every flag
off (dropout rates of 0), a step trains on the record's caption exactly, and the generator's later draws
(the preservation prompts) are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from altadapter.data.records import Record
from altadapter.training.config import CaptionConfig


def _chance(generator: torch.Generator) -> float:
    return torch.rand((), generator=generator).item()


def choose_caption(record: Record, generator: torch.Generator) -> str:
    """One of the record's captions, uniformly; the caption itself when it has no others."""
    if not record.other_captions:
        return record.caption
    return record.captions[int(torch.randint(len(record.captions), (), generator=generator))]


def augment_caption(caption: str, config: CaptionConfig, generator: torch.Generator) -> str:
    """kohya's process_caption: the whole caption dropped at --caption_dropout_rate, else its tags after the
    first --keep_tokens shuffled (--shuffle_caption) and each dropped at --caption_tag_dropout_rate; the tags
    joined by the separator and a space."""
    if config.caption_dropout_rate > 0 and _chance(generator) < config.caption_dropout_rate:
        return ""
    if not (config.shuffle_caption or config.caption_tag_dropout_rate > 0):
        return caption
    tags = [tag.strip() for tag in caption.split(config.caption_separator) if tag.strip()]
    fixed, free = tags[: config.keep_tokens], tags[config.keep_tokens :]
    if config.shuffle_caption:
        free = [free[i] for i in torch.randperm(len(free), generator=generator).tolist()]
    if config.caption_tag_dropout_rate > 0:
        kept = torch.rand(len(free), generator=generator) >= config.caption_tag_dropout_rate
        free = [tag for tag, keep in zip(free, kept.tolist(), strict=True) if keep]
    separator = config.caption_separator
    return (separator if separator.endswith(" ") else separator + " ").join(fixed + free)


def batch_captions(records: Sequence[Record], config: CaptionConfig, generator: torch.Generator) -> list[str]:
    """The texts one micro-batch trains on, record by record."""
    return [augment_caption(choose_caption(record, generator), config, generator) for record in records]
