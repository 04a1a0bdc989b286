"""Load a frozen AltDiffusion base (AltDiffusion, -m9, -m18) from a hub id or a local diffusers folder.

Stock `AltDiffusionPipeline.from_pretrained` cannot load these folders with diffusers 0.42: their
`model_index.json` names the text encoder's library "alt_diffusion", which does not exist. So each
component is loaded from its subfolder with its own class, and `make_pipeline` assembles a stock pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesModelWithTransformation,
)
from transformers import XLMRobertaTokenizer

from altadapter.devices import DTYPES, vae_scale_factor
from altadapter.errors import UserError

logger = logging.getLogger(__name__)

TEXT_ENCODER_CLASS = "RobertaSeriesModelWithTransformation"
# What a diffusers folder of the family needs; `snapshot_download` fetches only these.
MODEL_FILES = ["model_index.json", "tokenizer/*", "text_encoder/*", "unet/*", "vae/*", "scheduler/*"]


class BaseModelError(UserError):
    """The base model cannot be found or is not an AltDiffusion-family model."""


@dataclass(frozen=True)
class BaseInfo:
    """What an adapter must agree with: the base's dimensions and a fingerprint of its weights."""

    name: str
    hidden_size: int  # word-embedding width: the width of prompt vectors (1024 on m9)
    project_dim: int  # conditioning width: the width of the MLP adapter (768 on m9)
    model_max_length: int  # tokenizer padding length (512 on m9)
    max_text_positions: int  # tokens XLM-R can place: max_position_embeddings - pad_id - 1 (512 on m9)
    vocab_size: int
    fingerprint: str
    num_layers: int = 0  # encoder layers, what a LoRA adapter must agree with (24 on m9); 0: not recorded

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@dataclass
class AltDiffusionBase:
    """The frozen components of one AltDiffusion model, on one device in one dtype."""

    tokenizer: XLMRobertaTokenizer
    text_encoder: RobertaSeriesModelWithTransformation
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict
    info: BaseInfo
    path: Path | None  # the model folder; None for components taken from a pipeline

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae.config.block_out_channels)

    def noise_scheduler(self) -> DDPMScheduler:
        """The training-time noise schedule (DDPM over the model's betas, as diffusers' training examples)."""
        return DDPMScheduler.from_config(self.scheduler_config)


def resolve_model_path(model_path: str | Path, files: list[str] = MODEL_FILES) -> Path:
    """A local folder as is; anything else is a hub id whose `files` are downloaded (or taken from the cache)."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(model_path).startswith((".", "/", "~")) or str(model_path).count("/") != 1:
        raise BaseModelError(
            f"--model_path {model_path}: no such folder; pass a local diffusers folder of AltDiffusion "
            "(with model_index.json) or a hub id such as BAAI/AltDiffusion-m9"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model_path), allow_patterns=files))
    except Exception as error:  # offline, unknown repo, gated, network down: one answer for all
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BaseModelError(
            f"cannot fetch '{model_path}' from the Hugging Face Hub ({reason}); download it elsewhere and "
            f"pass the local folder: --model_path /path/to/{Path(str(model_path)).name}"
        ) from error


def check_model_dir(path: Path) -> None:
    """Fail with one clear line unless `path` holds an AltDiffusion-family diffusers folder."""
    parts = ("model_index.json", "text_encoder/config.json", "unet/config.json", "vae/config.json")
    for part in (*parts, "scheduler/scheduler_config.json"):
        if not (path / part).is_file():
            raise BaseModelError(f"{path} is not a diffusers model folder: {part} is missing")
    config = json.loads((path / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if TEXT_ENCODER_CLASS not in architectures:
        pipeline = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
        raise BaseModelError(
            f"{path} is a {pipeline} folder whose text encoder is {architectures or 'unknown'}; this tool "
            f"needs an AltDiffusion-family model ({TEXT_ENCODER_CLASS}), e.g. BAAI/AltDiffusion-m9"
        )


def fingerprint(
    text_encoder: RobertaSeriesModelWithTransformation, unet: UNet2DConditionModel, vae: AutoencoderKL
) -> str:
    """A short hash of the weights adapters and latent caches depend on, whatever dtype they are cast to."""
    digest = hashlib.sha256()
    projection = text_encoder.transformation_pre if text_encoder.has_pre_transformation else None
    tensors = [
        text_encoder.get_input_embeddings().weight[:1024],
        text_encoder.transformation.weight,
        *([projection.weight] if projection is not None else []),
        unet.conv_in.weight,
        unet.conv_out.weight,
        vae.encoder.conv_in.weight,
        vae.decoder.conv_out.weight,
    ]
    for tensor in tensors:
        # Hashed as bf16 so the fp32 weights of a folder give one answer, whatever --dtype asks for.
        digest.update(tensor.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_base(
    model_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> AltDiffusionBase:
    """Load tokenizer, text encoder, UNet, VAE and scheduler config, frozen, in `dtype` on `device`."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    path = resolve_model_path(model_path)
    check_model_dir(path)
    tokenizer = XLMRobertaTokenizer.from_pretrained(path / "tokenizer")
    # Loaded in fp32 (exact for fp32/fp16/bf16 files) so the fingerprint does not depend on `dtype`.
    text_encoder = RobertaSeriesModelWithTransformation.from_pretrained(
        path / "text_encoder", dtype=torch.float32
    )
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32)
    scheduler_config = DDPMScheduler.load_config(path / "scheduler")
    info = base_info(str(model_path), tokenizer, text_encoder, unet, vae)
    if unet.config.cross_attention_dim != info.project_dim:
        raise BaseModelError(
            f"{path}: UNet cross_attention_dim {unet.config.cross_attention_dim} != text encoder "
            f"project_dim {info.project_dim}; the folder mixes components of different models"
        )
    for module in (text_encoder, unet, vae):
        # torch's own `to`: diffusers' override warns about fp32-only modules even when there are none.
        torch.nn.Module.to(module.requires_grad_(False).eval(), device=device, dtype=dtype)
    return AltDiffusionBase(tokenizer, text_encoder, unet, vae, dict(scheduler_config), info, path)


def load_scheduler_config(model_path: str | Path) -> dict:
    """Only the scheduler config of a base, its folder checked first (a hub id fetches only config files)."""
    path = resolve_model_path(model_path, ["model_index.json", "*/config.json", "scheduler/*"])
    check_model_dir(path)
    return dict(DDPMScheduler.load_config(path / "scheduler"))


def base_info(
    name: str,
    tokenizer: XLMRobertaTokenizer,
    text_encoder: RobertaSeriesModelWithTransformation,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
) -> BaseInfo:
    """What adapters must agree with, read off the components."""
    config = text_encoder.config
    return BaseInfo(
        name=name,
        hidden_size=config.hidden_size,
        project_dim=config.project_dim,
        model_max_length=tokenizer.model_max_length,
        max_text_positions=config.max_position_embeddings - config.pad_token_id - 1,
        vocab_size=config.vocab_size,
        fingerprint=fingerprint(text_encoder, unet, vae),
        num_layers=config.num_hidden_layers,
    )


def base_of_pipeline(pipe, name: str = "a stock pipeline") -> AltDiffusionBase:
    """The components of a stock `AltDiffusionPipeline` as an `AltDiffusionBase`, shared, not copied."""
    parts = (pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae)
    info = base_info(name, *parts)
    return AltDiffusionBase(*parts, dict(pipe.scheduler.config), info, path=None)


def load_tokenizer(model_path: str | Path) -> XLMRobertaTokenizer:
    """Only the tokenizer of a base (a hub id fetches just its tokenizer files)."""
    path = resolve_model_path(model_path, ["tokenizer/*"])
    if not (path / "tokenizer").is_dir():
        raise BaseModelError(f"{path} has no tokenizer/ folder; pass an AltDiffusion diffusers folder")
    return XLMRobertaTokenizer.from_pretrained(path / "tokenizer")


def default_scheduler(base: AltDiffusionBase) -> SchedulerMixin:
    """The sampling scheduler `model_index.json` names (PNDM for m9), built from the scheduler config."""
    model_index = (
        json.loads((base.path / "model_index.json").read_text(encoding="utf-8")) if base.path else {}
    )
    scheduler_class = getattr(diffusers, model_index.get("scheduler", [None, "PNDMScheduler"])[1])
    return scheduler_class.from_config(base.scheduler_config)


def make_pipeline(base: AltDiffusionBase, scheduler: SchedulerMixin | None = None):
    """A stock diffusers `AltDiffusionPipeline` over the loaded components (no safety checker)."""
    # Imported here: the pipeline module pulls in CLIP image processors that warn about torchvision.
    from diffusers import AltDiffusionPipeline

    return AltDiffusionPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        scheduler=scheduler or default_scheduler(base),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
