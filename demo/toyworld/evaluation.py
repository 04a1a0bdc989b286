"""Score the toy demo's models: attribute accuracy of the pictures they draw, and held-out denoising loss.

Accuracy: every model renders the same prompts from the same noise in one batched loop
(`rendering.sampler.render_rows`, a row per model), `world.classify_image` reads each picture, and a picture is
right on an attribute when it shows what the prompt names. Loss: `training.losses.validation_loss`, the training
scripts' own held-out metric (fixed timesteps, fixed noise per image), here on pictures of the base world
with plain-word captions, which no adapter was trained on.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from altadapter.adapter_io import load_adapter
from altadapter.adapters.conditioning import encode_text
from altadapter.data.records import scan_dataset
from altadapter.fileio import atomic_write
from altadapter.model import AltDiffusionBase, load_base
from altadapter.rendering.grids import labelled_rows
from altadapter.rendering.sampler import RenderSettings, Row, default_size, render_rows
from altadapter.training.caches import build_latent_cache
from altadapter.training.losses import validation_loss
from toyworld import captions, world

Models = Mapping[str, nn.Module | None]  # model name -> its adapter; None is the original model
Pictures = dict[str, list[list[Image.Image]]]  # model name -> pictures [prompt][image]
CHUNK_PROMPTS = 10  # prompts per rendering task; each chunk's noise is seeded by its start, whatever `jobs`


def load_models(
    base: AltDiffusionBase, adapter_files: Mapping[str, str | Path]
) -> dict[str, nn.Module | None]:
    """The original model (as "original") and each named adapter file, checked against `base`."""
    models: dict[str, nn.Module | None] = {"original": None}
    for name, path in adapter_files.items():
        adapter, _ = load_adapter(path, base.info)
        models[name] = adapter.to(base.device)
    return models


def render_models(
    base: AltDiffusionBase, models: Models, prompts: Sequence[world.Prompt], settings: RenderSettings
) -> Pictures:
    """Pictures per model, [prompt][image], every model from the same noise for the same prompt and image."""
    rows = [Row(adapter) for adapter in models.values()]  # Row(None) is the original model
    rendered = render_rows(base, [p.text for p in prompts], rows, settings, progress=False)
    return {name: [per_prompt[index] for per_prompt in rendered] for index, name in enumerate(models)}


def score_pictures(
    pictures: Sequence[Sequence[Image.Image]], prompts: Sequence[world.Prompt]
) -> dict[str, object]:
    """`world.attribute_accuracy` of pictures [prompt][image] against what each prompt names."""
    flat = [image for images in pictures for image in images]
    expected = [prompt.attrs for prompt, images in zip(prompts, pictures, strict=True) for _ in images]
    return world.attribute_accuracy(flat, expected)


def sample_sheet(pictures: Pictures, count: int) -> Image.Image:
    """A labelled sheet: one row per model, the first picture of each of the first `count` prompts."""
    return labelled_rows([(name, [images[0] for images in rows[:count]]) for name, rows in pictures.items()])


def write_base_world_heldout(folder: str | Path, n: int, seed: int, *, size: int = 32) -> Path:
    """`n` base-world pictures of `size` pixels with plain-word captions (NNNNN.png + NNNNN.txt)."""
    rng = np.random.default_rng(seed)
    return _write_pictures(folder, captions.base_world_prompts(n, seed), [(size, size)] * n, rng)


def write_domain_nonsquare_heldout(folder: str | Path, n: int, seed: int, *, size: int = 32) -> Path:
    """`n` domain pictures, each 2:1 or 1:2 with `size` as its shorter side, with training-length tag captions."""
    rng = np.random.default_rng(seed)
    prompts = captions.domain_prompts(n, seed, num_tags=captions.TRAIN_NUM_TAGS)
    return _write_pictures(folder, prompts, captions.picture_sizes(n, size, 1.0, rng), rng)


def _write_pictures(
    folder: str | Path,
    prompts: Sequence[world.Prompt],
    sizes: Sequence[tuple[int, int]],
    rng: np.random.Generator,
) -> Path:
    """Each prompt's scene at its size, captioned by the prompt (NNNNN.png + NNNNN.txt): a folder
    `scan_dataset` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = captions.render_at_sizes([p.attrs for p in prompts], sizes, rng)
    for index, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        Image.fromarray(image, mode="RGB").save(folder / f"{index:05d}.png")
        with atomic_write(folder / f"{index:05d}.txt") as handle:
            handle.write(prompt.text + "\n")
    return folder


@dataclass(frozen=True)
class LossSet:
    """A held-out folder for `heldout_losses`; its pictures at the base's square size (`buckets` None), or
    each whole at the nearest of `buckets`, as --enable_bucket trains them."""

    data_dir: str
    buckets: tuple[tuple[int, int], ...] | None = None


def heldout_losses(
    base: AltDiffusionBase, models: Models, loss_set: LossSet, *, seed: int, batch_size: int
) -> dict[str, float]:
    """Held-out denoising loss of each model on a dataset folder, as the training scripts compute it."""
    cache = build_latent_cache(
        base,
        scan_dataset(loss_set.data_dir),
        resolution=default_size(base)[0],
        random_flip=False,
        buckets=list(loss_set.buckets) if loss_set.buckets else None,
        progress=False,
    )
    scheduler = base.noise_scheduler()
    return {
        name: validation_loss(
            base,
            scheduler,
            cache,
            functools.partial(encode_text, base, adapter=adapter),
            seed=seed,
            batch_size=batch_size,
        )
        for name, adapter in models.items()
    }


@dataclass
class Evaluation:
    """What `evaluate_models` measured: accuracy[model][prompt set], held-out loss[model][loss set],
    pictures[prompt set][model]."""

    accuracy: dict[str, dict[str, dict]]
    loss: dict[str, dict[str, float]]
    pictures: dict[str, Pictures]
    fingerprint: str  # of the base the models were evaluated on


@dataclass(frozen=True)
class _LossTask:
    loss_set: LossSet
    seed: int
    batch_size: int


@dataclass(frozen=True)
class _RenderTask:
    set_name: str
    prompts: list[world.Prompt]
    settings: RenderSettings


def evaluate_models(
    model_path: str | Path,
    adapter_files: Mapping[str, str | Path],
    prompt_sets: Mapping[str, Sequence[world.Prompt]],
    settings: Mapping[str, RenderSettings],
    *,
    loss_sets: Mapping[str, LossSet],
    loss_seed: int,
    loss_batch_size: int,
    jobs: int,
    device: str = "cpu",
) -> Evaluation:
    """Render every prompt set with every model, each set with its `settings[set_name]`, and score it;
    held-out loss on each of `loss_sets` too.

    The work is split into tasks (each loss, and chunks of `CHUNK_PROMPTS` prompts) run by `jobs` worker
    processes, each with this process's threads / jobs threads: small models run faster on one thread
    each, side by side, than on several threads that wait for each other. The numbers do not depend on
    `jobs`. `device` is where the workers run the models (a GPU makes a quick tuning loop). The workers
    are spawned: a script that calls this needs the `if __name__ == "__main__":` guard.
    """
    files = {name: str(path) for name, path in adapter_files.items()}
    threads = max(1, torch.get_num_threads() // jobs)
    renders = [
        _RenderTask(
            set_name,
            list(prompts[start : start + CHUNK_PROMPTS]),
            replace(settings[set_name], seed=settings[set_name].seed + start),
        )
        for set_name, prompts in prompt_sets.items()
        for start in range(0, len(prompts), CHUNK_PROMPTS)
    ]
    loss_tasks = [_LossTask(loss_set, loss_seed, loss_batch_size) for loss_set in loss_sets.values()]
    tasks = [*loss_tasks, *renders]  # the longest tasks first
    if jobs == 1:
        _start_worker(str(model_path), files, threads, device)
        outputs = [_run_task(task) for task in tasks]
    else:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
        with ProcessPoolExecutor(
            jobs,
            mp_context=context,
            initializer=_start_worker,
            initargs=(str(model_path), files, threads, device),
        ) as pool:
            outputs = list(pool.map(_run_task, tasks))
    fingerprint = outputs[0][1]
    per_set = dict(zip(loss_sets, (losses for losses, _ in outputs[: len(loss_tasks)]), strict=True))
    loss = {
        name: {set_name: per_set[set_name][name] for set_name in loss_sets} for name in ["original", *files]
    }
    pictures: dict[str, Pictures] = {set_name: {} for set_name in prompt_sets}
    for task, chunk_pictures in zip(renders, outputs[len(loss_tasks) :], strict=True):
        for name, rows in chunk_pictures.items():
            pictures[task.set_name].setdefault(name, []).extend(rows)
    accuracy = {
        name: {
            set_name: score_pictures(pictures[set_name][name], prompts)
            for set_name, prompts in prompt_sets.items()
        }
        for name in loss
    }
    return Evaluation(accuracy, loss, pictures, fingerprint)


_WORKER: dict = {}  # the base and models one evaluation process loaded, for its tasks


def _start_worker(model_path: str, adapter_files: dict[str, str], threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    base = load_base(model_path, device=device)
    _WORKER.update(base=base, models=load_models(base, adapter_files))


def _run_task(task: _LossTask | _RenderTask):
    base, models = _WORKER["base"], _WORKER["models"]
    if isinstance(task, _LossTask):
        losses = heldout_losses(base, models, task.loss_set, seed=task.seed, batch_size=task.batch_size)
        return losses, base.info.fingerprint
    return render_models(base, models, task.prompts, task.settings)
