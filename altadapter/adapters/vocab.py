"""The vocab adapter: textual inversion for XLM-R, one new token of learned input vectors per domain tag.

Only the domain's tags get new vectors; the tokenizer, the encoder and every other word stay as they are.
`vocab_tokens.tokenize_with_tags` finds the adapter's tags in a prompt and tokenizes it as diffusers'
textual inversion would with each tag written as its own added token, so an exported adapter
(`pipe.load_textual_inversion`) encodes exactly as here. Placeholder id V + t * n + k
is vector k of tag t (V word-embedding rows, n = vectors_per_tag). A prompt without any of the tags is
encoded exactly as the original.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import XLMRobertaTokenizer

from altadapter.adapters.kind import AdapterKind, check_positive, learned_vectors
from altadapter.adapters.vocab_tokens import tag_tokens, tokenize_with_tags
from altadapter.data.prompts import TagVocabulary
from altadapter.data.tag_text import tag_spans
from altadapter.data.tags import read_tag_file
from altadapter.encoding import encode_embeddings
from altadapter.fileio import atomic_write, write_safetensors
from altadapter.model import AltDiffusionBase, BaseInfo, load_tokenizer


@dataclass(frozen=True)
class VocabConfig:
    """`vectors_per_tag` learned vectors of width `dim` (the word-embedding width) for each of `tags`.

    Tags are stored as the normaliser writes them with underscores as spaces ("long hair", not
    "long_hair"); a prompt's tags are normalised the same way before they are matched.
    """

    dim: int
    tags: tuple[str, ...]
    vectors_per_tag: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))  # an adapter file's JSON gives a list
        check_positive(self, "dim", "vectors_per_tag")
        if not self.tags:
            raise ValueError("a vocab adapter needs at least one tag")
        for tag in self.tags:
            if not isinstance(tag, str) or tag_spans(tag, underscores_to_spaces=True) != [(0, len(tag), tag)]:
                raise ValueError(
                    f"tag {tag!r} is not one normalised tag (no separators, single spaces, no underscores)"
                )
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("tags must be distinct")

    @property
    def num_vectors(self) -> int:
        return len(self.tags) * self.vectors_per_tag


class VocabAdapter(nn.Module):
    """Learned input vectors of the domain's tags, (T * n, H): rows t*n .. t*n + n - 1 belong to tags[t]."""

    kind: ClassVar[str] = "vocab"

    def __init__(self, config: VocabConfig, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = learned_vectors((config.num_vectors, config.dim), init, "vocab")

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """The vectors at row indices `slots`: (B, T) -> (B, T, H)."""
        return self.embeddings[slots]


@dataclass(frozen=True)
class VocabOptions:
    """The vocab adapter's training flags."""

    num_tags: int = 32
    tags: str | None = None
    vectors_per_tag: int = 1
    init_text: str | None = None

    def __post_init__(self) -> None:
        check_positive(self, "num_tags", "vectors_per_tag", prefix="--")
        if self.tags is not None and not Path(self.tags).is_file():
            raise ValueError(f"--tags {self.tags}: no such file")


def vocab_init_from_pieces(
    word_embeddings: torch.Tensor,
    pieces: Sequence[Sequence[int]],
    vectors_per_tag: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each tag's vectors from the word embeddings of its pieces: (len(pieces) * n, H).

    The pieces are cut into n consecutive runs and vector k is the mean of run k, so with one vector a
    tag starts as the average of its pieces. A tag with fewer pieces than vectors repeats its pieces,
    with small noise to break the tie between equal rows.
    """
    rows = []
    for tag_pieces in pieces:
        if not tag_pieces:
            raise ValueError("a tag (or --init_text) tokenized to no pieces")
        table = word_embeddings.detach()[torch.tensor(list(tag_pieces))].float().cpu()  # (p, H)
        for k, run in enumerate(torch.arange(len(tag_pieces)).tensor_split(vectors_per_tag)):
            if len(run):
                rows.append(table[run].mean(dim=0))
            else:
                noise = torch.randn(table.shape[1], generator=generator) * table.std() * 0.1
                rows.append(table[k % len(tag_pieces)] + noise)
    return torch.stack(rows)


class VocabKind(AdapterKind):
    """A new token per domain tag: prompts without the tags keep the original conditioning, bit for bit."""

    name = "vocab"
    title = "Vocab"
    summary = "a new token per domain tag"
    config_class = VocabConfig
    module_class = VocabAdapter
    options_class = VocabOptions
    train_command = "train_adapter.py --kind vocab"
    render_command = "render_adapter.py"
    default_run_name = "altm9-vocab"
    default_learning_rate = 1e-3
    vector_noun = "tag vector"
    export_format = "diffusers"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("vocab adapter")
        group.add_argument(
            "--num_tags",
            type=int,
            default=VocabOptions.num_tags,
            help="learn a new token for each of the dataset's N most frequent tags (32 x 1024 = 32,768 "
            "parameters on m9)",
        )
        group.add_argument(
            "--tags",
            default=None,
            help="file of the tags to learn instead (one per line or comma-separated, UTF-8)",
        )
        group.add_argument(
            "--vectors_per_tag",
            type=int,
            default=VocabOptions.vectors_per_tag,
            help="learned input vectors that stand for each tag",
        )
        group.add_argument(
            "--init_text",
            default=None,
            help="initialise every tag's vectors from this text's word embeddings (default: each tag's pieces)",
        )

    def build(
        self, options: VocabOptions, base: AltDiffusionBase, captions: Sequence[str], seed: int
    ) -> VocabAdapter:
        """A vector run per tag (--tags FILE, or the --num_tags most frequent), from its pieces or --init_text."""
        if options.tags:
            tags = read_tag_file(options.tags, underscores_to_spaces=True)
            if not tags:
                raise ValueError(
                    f"--tags {options.tags} holds no tags; write one tag per line or comma-separated"
                )
        else:
            ranked = TagVocabulary.from_captions(captions, underscores_to_spaces=True).ranked()
            tags = [tag for tag, _ in ranked[: options.num_tags]]
        config = VocabConfig(
            dim=base.info.hidden_size, tags=tuple(tags), vectors_per_tag=options.vectors_per_tag
        )
        texts = [options.init_text] * len(tags) if options.init_text else tags
        init = vocab_init_from_pieces(
            base.text_encoder.get_input_embeddings().weight,
            [base.tokenizer(text, add_special_tokens=False).input_ids for text in texts],
            options.vectors_per_tag,
            torch.Generator().manual_seed(seed),
        )
        return VocabAdapter(config, init)

    def check_base(self, config: dict, base: BaseInfo) -> str | None:
        if config.get("dim") != base.hidden_size:
            return f"this vocab adapter is {config.get('dim')} wide but the base's hidden_size is {base.hidden_size}"
        return None

    def tokenize(
        self, base: AltDiffusionBase, prompts: Sequence[str], config: VocabConfig, *, warn: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_with_tags(base, prompts, config, base.info.model_max_length, warn=warn)

    def encode(
        self, base: AltDiffusionBase, ids: torch.Tensor, mask: torch.Tensor, module: nn.Module
    ) -> torch.Tensor:
        embed = base.text_encoder.get_input_embeddings()
        ids = ids.to(base.text_encoder.device)
        slots = ids - embed.num_embeddings  # (B, T): a tag vector's row where >= 0, a word below
        words = embed(ids.clamp(max=embed.num_embeddings - 1))  # (B, T, H)
        vectors = module(slots.clamp(min=0)).to(words.dtype)  # (B, T, H)
        return encode_embeddings(base, torch.where((slots >= 0).unsqueeze(-1), vectors, words), mask)

    def learned_vectors(self, module: nn.Module) -> torch.Tensor:
        return module.embeddings

    def vector_labels(self, config: dict) -> list[str]:
        """The tag each vector stands for, numbered when a tag has several."""
        per_tag = config["vectors_per_tag"]
        return [tag if per_tag == 1 else f"{tag} [{k}]" for tag in config["tags"] for k in range(per_tag)]

    def export(self, module: nn.Module, output_dir: Path, *, model_path: str) -> list[Path]:
        """diffusers textual-inversion files, one per tag, that `pipe.load_textual_inversion(file)` loads."""
        return export_textual_inversion(module, load_tokenizer(model_path), output_dir)


def export_textual_inversion(
    adapter: VocabAdapter, tokenizer: XLMRobertaTokenizer, output_dir: Path
) -> list[Path]:
    """`DIR/<tag>.safetensors` = {token: (n, H)} per tag, `tokens.json` (tag -> token) and a README.md."""
    config = adapter.config
    tokens = [names[0] for names in tag_tokens(tokenizer, config)]
    vectors = adapter.embeddings.detach().float().cpu().split(config.vectors_per_tag)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for token, rows in zip(tokens, vectors, strict=True):
        path = output_dir / f"{_file_stem(token)}.safetensors"
        write_safetensors(path, {token: rows.contiguous()})
        written.append(path)
    mapping = dict(zip(config.tags, tokens, strict=True))
    with atomic_write(output_dir / "tokens.json") as handle:
        json.dump(mapping, handle, ensure_ascii=False, indent=2)
    with atomic_write(output_dir / "README.md") as handle:
        handle.write(_export_readme(mapping, written))
    return [*written, output_dir / "tokens.json", output_dir / "README.md"]


def _file_stem(token: str) -> str:
    """A file name for a token: its brackets off, characters file systems refuse as `_`."""
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", token[1:-1]).lstrip(".") or "tag"


def _export_readme(mapping: dict[str, str], files: list[Path]) -> str:
    rows = [
        f"| {tag} | `{token}` | `{path.name}` |"
        for (tag, token), path in zip(mapping.items(), files, strict=True)
    ]
    loads = [f'pipe.load_textual_inversion("{path.name}")' for path in files]
    return "\n".join(
        [
            "# Textual-inversion tokens of a vocab adapter",
            "",
            "Write each token in a prompt where the tag would stand, e.g. "
            f"`{', '.join(list(mapping.values())[:2])}, red hair`.",
            "",
            "| tag | token | file |",
            "|---|---|---|",
            *rows,
            "",
            "```python",
            "# pipe: a diffusers AltDiffusionPipeline of the base this adapter was trained on; run from this folder",
            *loads,
            "```",
            "",
        ]
    )
