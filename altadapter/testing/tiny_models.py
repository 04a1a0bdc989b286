"""Build AltDiffusion-architecture models of any size offline, saved in the diffusers folder layout.

The same classes as BAAI/AltDiffusion-m9 (XLM-R tokenizer, `RobertaSeriesModelWithTransformation`,
`UNet2DConditionModel`, `AutoencoderKL`, PNDM/DDIM scheduler configs) with random weights, so tests, the demo
and benchmarks go through exactly the loading code a real model takes, with nothing downloaded.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesConfig,
    RobertaSeriesModelWithTransformation,
)
from transformers import XLMRobertaTokenizer

from altadapter.devices import vae_scale_factor

CONFIG_DIR = Path(__file__).parent / "configs"

# The m9 scheduler: its scheduler_config.json says DDIM, while its model_index.json names PNDM.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# Words every tiny tokenizer knows as single pieces, so test prompts tokenize into real words.
BASIC_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "with",
    "on",
    "in",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "girl",
    "boy",
    "cat",
    "dog",
    "house",
    "tree",
    "sky",
    "solo",
    "1girl",
    "long",
    "short",
    "hair",
    "dress",
    "hat",
    "background",
    "simple",
    "smile",
    "eyes",
]


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of one AltDiffusion-architecture model; `m9` gives the published ones."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    project_dim: int = 24  # the UNet's cross_attention_dim: the conditioning width
    model_max_length: int = 32  # tokenizer padding length (512 on m9, 77 on AltDiffusion / m18)
    has_pre_transformation: bool = False  # m18: project pre_LN(hidden_states[-2]) instead
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    vae_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    sample_size: int = 32  # pixels
    extra_words: tuple[str, ...] = field(default_factory=tuple)
    # Word-embedding rows past the tokenizer's tokens, as checkpoints pad their embedding matrices.
    padded_rows: int = 0

    @property
    def latent_size(self) -> int:
        return self.sample_size // vae_scale_factor(self.vae_channels)


PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(),
    # A scaled-down SD layout that takes a few seconds a training step on 2 CPU cores.
    "cpu": ModelSize(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        project_dim=256,
        model_max_length=128,
        unet_channels=(64, 128, 256),
        unet_layers_per_block=2,
        attention_head_dim=8,
        vae_channels=(32, 64, 128, 128),
        sample_size=128,
    ),
}


def build_tokenizer(words: Sequence[str], model_max_length: int) -> XLMRobertaTokenizer:
    """An XLM-R (SentencePiece Unigram) tokenizer whose vocabulary is `words` plus every printable character."""
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces: dict[str, float] = {}
    # Whole words score above single characters, so the Unigram model prefers them.
    for word in words:
        pieces.setdefault("▁" + word, -1.0)
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces.setdefault(char, -5.0)
        pieces.setdefault("▁" + char, -5.5)
    pieces.setdefault("▁", -6.0)
    vocab = specials + sorted(pieces.items()) + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=model_max_length)


def build_text_encoder(size: ModelSize, vocab_size: int) -> RobertaSeriesModelWithTransformation:
    """A randomly initialised `RobertaSeriesModelWithTransformation` with m9's conventions."""
    config = RobertaSeriesConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        intermediate_size=size.intermediate_size,
        # XLM-R reserves positions 0..pad_id for padding: 2 more than the usable length, as m9's 514.
        max_position_embeddings=size.model_max_length + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        project_dim=size.project_dim,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        architectures=["RobertaSeriesModelWithTransformation"],
    )
    if size.has_pre_transformation:
        config.has_pre_transformation = True
    return RobertaSeriesModelWithTransformation(config).eval()


def build_unet(size: ModelSize) -> UNet2DConditionModel:
    """An SD 1.x-layout UNet (cross-attention in all but the deepest block) conditioned on `project_dim`."""
    depth = len(size.unet_channels)
    return UNet2DConditionModel(
        sample_size=size.latent_size,
        in_channels=size.latent_channels,
        out_channels=size.latent_channels,
        block_out_channels=size.unet_channels,
        layers_per_block=size.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1),
        cross_attention_dim=size.project_dim,
        attention_head_dim=size.attention_head_dim,
        norm_num_groups=min(32, min(size.unet_channels)),
    )


def build_vae(size: ModelSize) -> AutoencoderKL:
    """An SD 1.x-layout VAE with the SD latent scaling factor."""
    depth = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=size.vae_channels,
        layers_per_block=size.vae_layers_per_block,
        latent_channels=size.latent_channels,
        norm_num_groups=min(32, min(size.vae_channels)),
        sample_size=size.sample_size,
        scaling_factor=0.18215,
    )


def save_model_dir(
    path: str | Path,
    *,
    tokenizer: XLMRobertaTokenizer,
    text_encoder: RobertaSeriesModelWithTransformation,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: dict | None = None,
) -> Path:
    """Write components in the diffusers folder layout, with m9's `model_index.json` (PNDM, alt_diffusion)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path / "tokenizer")
    text_encoder.save_pretrained(path / "text_encoder")
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    DDIMScheduler(**(scheduler_config or SCHEDULER_CONFIG)).save_pretrained(path / "scheduler")
    model_index = {
        "_class_name": "AltDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        # As published: a library name that does not exist, which is why stock from_pretrained fails.
        "text_encoder": ["alt_diffusion", "RobertaSeriesModelWithTransformation"],
        "tokenizer": ["transformers", "XLMRobertaTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")
    return path


def read_published_config(name: str, part: str) -> dict:
    """One component's config ("text_encoder", "unet", "vae", "scheduler") of a shipped architecture."""
    return json.loads((CONFIG_DIR / name / f"{part}.json").read_text(encoding="utf-8"))


def build_published_model_dir(path: str | Path, name: str = "altdiffusion-m9", *, seed: int = 0) -> Path:
    """A random-weight model of a published architecture, from the config files shipped in `configs/name`."""
    torch.manual_seed(seed)
    read = functools.partial(read_published_config, name)
    text_config = RobertaSeriesConfig(**read("text_encoder"))
    scheduler_config = {k: v for k, v in read("scheduler").items() if not k.startswith("_")}
    return save_model_dir(
        path,
        tokenizer=build_tokenizer(BASIC_WORDS, text_config.max_position_embeddings - 2),
        text_encoder=RobertaSeriesModelWithTransformation(text_config).eval(),
        unet=UNet2DConditionModel.from_config(read("unet")),
        vae=AutoencoderKL.from_config(read("vae")),
        scheduler_config=scheduler_config,
    )


def build_model_dir(
    path: str | Path, size: ModelSize | str = "tiny", *, words: Sequence[str] = (), seed: int = 0
) -> Path:
    """Build a random AltDiffusion-architecture model and save it to `path`; returns `path`.

    `size` is a `ModelSize`, a preset name ("tiny", "cpu"), or "m9" for the published m9 architecture.
    """
    if size == "m9":
        return build_published_model_dir(path, "altdiffusion-m9", seed=seed)
    size = PRESETS[size] if isinstance(size, str) else size
    torch.manual_seed(seed)
    tokenizer = build_tokenizer([*BASIC_WORDS, *size.extra_words, *words], size.model_max_length)
    return save_model_dir(
        path,
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(size, len(tokenizer) + size.padded_rows),
        unet=build_unet(size),
        vae=build_vae(size),
    )
