"""The side-by-side sampler: tuned and original rendered from the same noise in one batched denoising loop.

Image j of prompt i gets its own generator, seeded from (seed, i, j): it draws the initial latents and, for
ancestral samplers, each step's noise. Every row of the comparison (each adapter scale, then the original)
gets a generator seeded the same way, so the rows differ only in their conditioning. The rows go through
the UNet together, as `[uncond of every image, cond of every image]`, at most `max_batch` images at a time;
images whose conditionings differ in length (a prompt adapter on a 77-token base) form separate groups
within the same loop, because padding the original would change its pixels. A single row of one prompt is
exactly what the stock `AltDiffusionPipeline` computes when given one generator per image. A row whose
conditioning is the original's (a scale of 0) is not rendered again: it gets the original row's images.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import SchedulerMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from altadapter import encoding
from altadapter.adapters.conditioning import encode_text, is_original
from altadapter.data.images import check_resolution
from altadapter.fileio import atomic_write
from altadapter.model import AltDiffusionBase
from altadapter.rendering.grids import image_grid, labelled_rows
from altadapter.rendering.schedulers import SCHEDULERS, check_steps, make_scheduler


@dataclass(frozen=True)
class RenderSettings:
    """How to sample: the same settings for the tuned rows and the original one."""

    num_images: int = 4  # per prompt (the write-up used 4)
    num_inference_steps: int = 100  # the write-up found fewer than 100 PNDM steps too noisy
    guidance_scale: float = 7.5  # classifier-free guidance; <= 1 turns it off, as in the stock pipeline
    negative_prompt: str = ""
    seed: int = 0
    height: int | None = None  # pixels; None: the UNet's sample size times the VAE's scale factor
    width: int | None = None
    scheduler: str = "pndm"
    scales: tuple[float, ...] = (1.0,)  # adapter strengths, one tuned row each; 0 is the original
    max_batch: int = 8  # images denoised together; with guidance the UNet sees twice as many

    def __post_init__(self) -> None:
        for name in ("num_images", "num_inference_steps", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_resolution(getattr(self, name), name)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct values, at least one, got {list(self.scales)}")

    def sized(self, base: AltDiffusionBase) -> RenderSettings:
        """These settings with an unset height or width filled in from the model."""
        height, width = default_size(base)
        return replace(self, height=self.height or height, width=self.width or width)

    @property
    def main_scale(self) -> float:
        """The scale whose grid keeps the write-up's file name: 1 if asked for, else the largest."""
        return 1.0 if 1.0 in self.scales else max(self.scales)


@dataclass(frozen=True)
class Row:
    """One row of a comparison: the conditioning of `adapter` at `scale`, or the original (adapter None)."""

    adapter: nn.Module | None = None
    scale: float = 1.0


@dataclass
class PromptImages:
    """Everything rendered for one prompt: each scale's images and the original's, image j from seeds[j]."""

    index: int
    prompt: str
    seeds: list[int]
    tuned: dict[float, list[Image.Image]] = field(default_factory=dict)
    original: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class PromptFiles:
    """File names written for one prompt, relative to the output folder."""

    tuned: dict[float, str]
    original: str
    compare: str


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The noise seed of image `image_index` of prompt `prompt_index`.

    A hash rather than seed + counter, so adding prompts or changing --num_images keeps every other
    image's noise.
    """
    digest = hashlib.sha256(f"{seed}/{prompt_index}/{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: what torch.Generator.manual_seed takes


def default_size(base: AltDiffusionBase) -> tuple[int, int]:
    """(height, width) the model was trained at, as the stock pipeline defaults them."""
    side = base.unet.config.sample_size * base.vae_scale_factor
    return side, side


def scale_label(scale: float, scales: Sequence[float]) -> str:
    """The label of a tuned row: plain "tuned" when it is the only one, at full strength."""
    return "tuned" if list(scales) == [1.0] else f"tuned, scale {scale:g}"


def comparison_rows(adapter: nn.Module | None, scales: Sequence[float]) -> list[Row]:
    """One tuned row per scale (none without an adapter), then the original."""
    tuned = [Row(adapter, scale) for scale in scales] if adapter is not None else []
    return [*tuned, Row()]


@torch.no_grad()
def render_rows(
    base: AltDiffusionBase,
    prompts: Sequence[str],
    rows: Sequence[Row],
    settings: RenderSettings,
    *,
    progress: bool = True,
) -> list[list[list[Image.Image]]]:
    """Images indexed [prompt][row][image], every row of a prompt from the same per-image noise.

    Models are used as found: no change to train/eval mode or requires_grad, so training can call this.
    """
    settings = settings.sized(base)
    check_steps(settings.scheduler, settings.num_inference_steps, base.scheduler_config)
    # Rows of one conditioning (the original, any scale-0 row) are rendered once and shared: CPU kernels
    # round by batch size and position, so a twin rendered in another batch could come out a level apart.
    keys = [Row() if is_original(row.adapter, row.scale) else row for row in rows]
    unique = list(dict.fromkeys(keys))
    items = [
        (p, r, j) for p in range(len(prompts)) for r in range(len(unique)) for j in range(settings.num_images)
    ]
    chunks = [items[k : k + settings.max_batch] for k in range(0, len(items), settings.max_batch)]
    negatives = [
        encode_text(base, [settings.negative_prompt], row.adapter, scale=row.scale) for row in unique
    ]
    images: list[list[list[Image.Image]]] = [[[] for _ in unique] for _ in prompts]
    conditionings: dict[tuple[int, int], torch.Tensor] = {}
    steps_per_chunk = len(_timesteps(make_scheduler(base, settings.scheduler), settings, base.device))
    bar = tqdm(total=len(chunks) * steps_per_chunk, unit="step", disable=not progress, desc="rendering")
    with bar, _each_message_once(encoding.logger):
        for chunk in chunks:
            first, last = chunk[0][0], chunk[-1][0]
            bar.set_postfix_str(
                f"prompt {first + 1}-{last + 1} of {len(prompts)}"
                if last > first
                else f"prompt {first + 1} of {len(prompts)}"
            )
            # Each prompt is encoded once per row, one at a time as the stock pipeline does, and
            # dropped once no later chunk needs it.
            conditionings = {key: value for key, value in conditionings.items() if key[0] >= first}
            for p, r, _ in chunk:
                if (p, r) not in conditionings:
                    conditionings[p, r] = encode_text(
                        base, [prompts[p]], unique[r].adapter, scale=unique[r].scale
                    )
            batch = [
                _Item(conditionings[p, r], negatives[r], image_seed(settings.seed, p, j)) for p, r, j in chunk
            ]
            for (p, r, _), image in zip(chunk, _sample(base, batch, settings, bar), strict=True):
                images[p][r].append(image)
    return [[list(prompt_rows[unique.index(key)]) for key in keys] for prompt_rows in images]


def render_comparison(
    base: AltDiffusionBase,
    adapter: nn.Module | None,
    prompts: Sequence[str],
    *,
    settings: RenderSettings,
    progress: bool = True,
) -> list[PromptImages]:
    """Each prompt rendered tuned (at every scale) and original, from the same noise, in one batched loop."""
    rows = comparison_rows(adapter, settings.scales)
    rendered = render_rows(base, prompts, rows, settings, progress=progress)
    results = []
    for index, (prompt, prompt_rows) in enumerate(zip(prompts, rendered, strict=True)):
        seeds = [image_seed(settings.seed, index, j) for j in range(settings.num_images)]
        tuned = {row.scale: images for row, images in zip(rows[:-1], prompt_rows[:-1], strict=True)}
        results.append(PromptImages(index, prompt, seeds, tuned, prompt_rows[-1]))
    return results


def prompt_files(index: int, settings: RenderSettings) -> PromptFiles:
    """The write-up's file names for prompt `index`; scales other than the main one get a `_scale_` suffix."""
    stem = f"grid_{index}_with_samples_{settings.num_images}_with_steps_{settings.num_inference_steps}"
    tuned = {
        scale: f"{stem}.png" if scale == settings.main_scale else f"{stem}_scale_{scale:g}.png"
        for scale in settings.scales
    }
    compare = (
        f"compare_{index}_with_samples_{settings.num_images}_with_steps_{settings.num_inference_steps}.png"
    )
    return PromptFiles(tuned, f"{stem}_original.png", compare)


def save_comparison(
    results: Sequence[PromptImages], output_dir: str | Path, settings: RenderSettings
) -> list[Path]:
    """Write each prompt's grids (one per scale, the original) and its labelled side-by-side; returns paths."""
    output_dir = Path(output_dir)
    written = []
    for result in results:
        files = prompt_files(result.index, settings)
        grids = {files.tuned[scale]: image_grid(images) for scale, images in result.tuned.items()}
        grids[files.original] = image_grid(result.original)
        labelled = [(scale_label(scale, settings.scales), images) for scale, images in result.tuned.items()]
        grids[files.compare] = labelled_rows([*labelled, ("original", result.original)])
        for name, image in grids.items():
            written.append(_save_png(image, output_dir / name))
    return written


@dataclass
class _Item:
    """One image to denoise: its conditioning (1, L, D), the negative's (1, L, D) and its noise seed."""

    conditioning: torch.Tensor
    negative: torch.Tensor
    seed: int


@dataclass
class _Group:
    """Images of one conditioning length, denoised by their own scheduler (multistep ones keep history)."""

    members: list[int]  # positions in the chunk
    scheduler: SchedulerMixin
    step_kwargs: dict  # what the stock pipeline passes to `scheduler.step`: eta, generators
    context: torch.Tensor  # (2B, L, D) negatives then prompts with guidance, else (B, L, D)
    latents: torch.Tensor  # (B, C, h, w)


def _sample(
    base: AltDiffusionBase, batch: list[_Item], settings: RenderSettings, bar: tqdm
) -> list[Image.Image]:
    """Denoise `batch` in one loop over timesteps (one UNet call per group per step) and decode it."""
    guided = settings.guidance_scale > 1 and base.unet.config.time_cond_proj_dim is None
    groups = [_make_group(base, batch, members, settings, guided) for members in _by_length(batch)]
    for timestep in groups[0].scheduler.timesteps:
        for group in groups:
            group.latents = _step(base, group, timestep, settings.guidance_scale, guided)
        bar.update()
    latents = torch.empty(len(batch), *groups[0].latents.shape[1:], device=base.device, dtype=base.dtype)
    for group in groups:
        latents[group.members] = group.latents.to(base.dtype)
    decoded = base.vae.decode(latents / base.vae.config.scaling_factor, return_dict=False)[0]
    processor = VaeImageProcessor(vae_scale_factor=base.vae_scale_factor)
    return processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * len(batch))


def _by_length(batch: list[_Item]) -> list[list[int]]:
    """Positions in `batch` grouped by conditioning length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for position, item in enumerate(batch):
        groups.setdefault(item.conditioning.shape[1], []).append(position)
    return list(groups.values())


def _make_group(
    base: AltDiffusionBase, batch: list[_Item], members: list[int], settings: RenderSettings, guided: bool
) -> _Group:
    """Fresh scheduler, per-image generators and initial latents, drawn as `prepare_latents` draws them."""
    scheduler = make_scheduler(base, settings.scheduler)
    _timesteps(scheduler, settings, base.device)
    generators = [torch.Generator("cpu").manual_seed(batch[m].seed) for m in members]
    factor = base.vae_scale_factor
    shape = (len(members), base.unet.config.in_channels, settings.height // factor, settings.width // factor)
    # CPU generators, so the same seed gives the same image on any device; scaled after set_timesteps,
    # since Euler's init_noise_sigma depends on the chosen timesteps.
    latents = randn_tensor(shape, generator=generators, device=base.device, dtype=base.dtype)
    prompts = torch.cat([batch[m].conditioning for m in members])
    context = torch.cat([torch.cat([batch[m].negative for m in members]), prompts]) if guided else prompts
    # As the stock pipeline's prepare_extra_step_kwargs: eta 0 for DDIM, and the generators for
    # ancestral samplers, which draw each image's step noise from its own (randn_tensor takes a list).
    accepted = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": 0.0} if "eta" in accepted else {}
    if "generator" in accepted:
        step_kwargs["generator"] = generators
    return _Group(members, scheduler, step_kwargs, context, latents * scheduler.init_noise_sigma)


def _step(
    base: AltDiffusionBase, group: _Group, timestep: torch.Tensor, guidance: float, guided: bool
) -> torch.Tensor:
    """One denoising step of a group, as the stock pipeline's loop body (same ops, same order)."""
    model_input = torch.cat([group.latents] * 2) if guided else group.latents
    model_input = group.scheduler.scale_model_input(model_input, timestep)
    noise = base.unet(model_input, timestep, encoder_hidden_states=group.context, return_dict=False)[0]
    if guided:
        uncond, text = noise.chunk(2)
        noise = uncond + guidance * (text - uncond)
    return group.scheduler.step(noise, timestep, group.latents, **group.step_kwargs, return_dict=False)[0]


def _timesteps(scheduler: SchedulerMixin, settings: RenderSettings, device: torch.device) -> torch.Tensor:
    """Set and return the scheduler's timesteps (PNDM adds warm-up steps beyond num_inference_steps)."""
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    return scheduler.timesteps


@contextlib.contextmanager
def _each_message_once(logger: logging.Logger):
    """Drop repeats of a log message: every row encodes the same over-long prompt and would warn again."""
    seen: set[str] = set()

    def first_time(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in seen:
            return False
        seen.add(message)
        return True

    logger.addFilter(first_time)
    try:
        yield
    finally:
        logger.removeFilter(first_time)


def _save_png(image: Image.Image, path: Path) -> Path:
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG")
    return path
