"""Evaluation prompts sampled from a dataset's own tags, since a domain's words are hard to invent by hand."""

from __future__ import annotations

import heapq
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from altadapter.data.records import Record, scan_dataset
from altadapter.data.tags import join_tags, split_tags
from altadapter.fileio import atomic_write

Weighting = Literal["uniform", "frequency"]
WEIGHTINGS: tuple[Weighting, ...] = ("uniform", "frequency")


@dataclass(frozen=True)
class TagVocabulary:
    """Each tag with the number of captions it appears in."""

    counts: Counter[str]
    num_captions: int

    @classmethod
    def from_captions(cls, captions: Iterable[str], *, underscores_to_spaces: bool = False) -> TagVocabulary:
        """Count tags over captions, split by the project's one tag normaliser."""
        counts: Counter[str] = Counter()
        num_captions = 0
        for caption in captions:
            counts.update(split_tags(caption, underscores_to_spaces=underscores_to_spaces))
            num_captions += 1
        return cls(counts, num_captions)

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> TagVocabulary:
        """Count tags over every caption of every record (each of a record's alternative captions too)."""
        return cls.from_captions(caption for record in records for caption in record.captions)

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike) -> TagVocabulary:
        """Count tags of a converted dataset (metadata.jsonl) or of a plain image + tag-file folder."""
        return cls.from_records(scan_dataset(data_dir))

    def __len__(self) -> int:
        return len(self.counts)

    def ranked(self) -> list[tuple[str, int]]:
        """(tag, count), most common first; ties in tag order, so sampling does not depend on scan order."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))

    def filtered(self, min_count: int) -> TagVocabulary:
        """Only the tags found in at least `min_count` captions."""
        return TagVocabulary(
            Counter({t: c for t, c in self.counts.items() if c >= min_count}), self.num_captions
        )

    def format_stats(self, top_k: int) -> str:
        """Vocabulary size and the `top_k` most common tags, as printed by prompts_generator.py."""
        lines = [f"{len(self)} distinct tags in {self.num_captions} captions; most common:"]
        lines += [f"  {count:6d}  {tag}" for tag, count in self.ranked()[:top_k]]
        return "\n".join(lines)


def sample_prompts(
    vocab: TagVocabulary,
    *,
    num_prompts: int,
    min_tags: int,
    max_tags: int,
    weighting: Weighting = "uniform",
    prefix: Sequence[str] = (),
    seed: int | None = None,
) -> list[str]:
    """Prompts of `prefix` + between min_tags and max_tags distinct tags, drawn uniformly or by frequency."""
    if not 1 <= min_tags <= max_tags:
        raise ValueError(f"need 1 <= min_tags <= max_tags, got min_tags={min_tags}, max_tags={max_tags}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    # The prefix is in every prompt already; drawing its tags again would repeat them.
    excluded = set(prefix)
    pool = [(tag, count) for tag, count in vocab.ranked() if tag not in excluded]
    if not pool:
        raise ValueError("no tags to sample: the vocabulary is empty after --min_count and --prefix")
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        k = min(rng.randint(min_tags, max_tags), len(pool))
        if weighting == "uniform":
            tags = [tag for tag, _ in rng.sample(pool, k)]
        else:
            # Efraimidis-Spirakis: the k largest random() ** (1 / weight) are a weighted draw without repeats.
            keyed = [(rng.random() ** (1.0 / count), tag) for tag, count in pool]
            tags = [tag for _, tag in heapq.nlargest(k, keyed)]
        prompts.append(join_tags([*prefix, *tags]))
    return prompts


def write_prompts(path: str | os.PathLike, prompts: Iterable[str]) -> None:
    """One prompt per line, UTF-8, written atomically: the file the rendering scripts read."""
    with atomic_write(path) as handle:
        handle.writelines(prompt + "\n" for prompt in prompts)


def read_prompts(path: str | os.PathLike, *, flag: str = "--prompts") -> list[str]:
    """Prompts from a file: one per line, UTF-8 (a BOM is fine), blank lines skipped."""
    path = Path(path)
    hint = f"write one with: python prompts_generator.py --data_dir DATASET --out {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file; {hint}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({error})") from error
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{flag} {path} holds no prompts; {hint}")
    return prompts
