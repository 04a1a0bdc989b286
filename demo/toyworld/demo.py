"""The toy demo: the write-up's whole workflow on the toy domain, run as a user runs it, then measured.

Stages, each timed:
1. data: demo/make_toy_domain.py, meta_file_converter.py (train and held-out), prompts_generator.py;
2. train: all four adapter kinds, each through its own script (mlp: text_encoder_util_mlp_transfer.py,
   prompt: text_encoder_util.py, vocab and lora: train_adapter.py --kind), then the MLP, prompt and LoRA
   again with --preserve_weight on base-world prompts (others than the ones the evaluation renders), and
   the MLP twice more: with tag dropout, and without buckets (its non-square pictures centre-cropped);
3. grids: each kind's rendering script (text_encoder_gen_show_mlp.py, text_encoder_gen_show.py,
   render_adapter.py) into IMAGES/KIND, the second of each pair with --compare_with the first: the
   write-up's table (prompt | MLP | Prompt | original) in IMAGES/prompt/report.md, Vocab | LoRA in
   IMAGES/lora/report.md;
4. evaluate, in this process: held-out denoising loss and attribute accuracy of the original model and
   every adapter, on domain prompts (short, long, and long at a wide size) and base-world prompts.

DemoConfig.models restricts stages 2-4 to some of the adapter runs (a sweep of one of them), the grids to
the pairs whose both models are among them (toyworld.workflow).

The scripts run as subprocesses of `sys.executable`, with the flags the README shows, so the demo also
proves that those commands work. Independent commands run `jobs` at a time, one thread each on two cores
(small models run faster single-threaded side by side than multi-threaded one after another).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from altadapter.adapter_io import AdapterMetadata, read_adapter_file
from altadapter.data.buckets import BucketRange
from altadapter.devices import vae_scale_factor
from altadapter.fileio import atomic_write
from altadapter.rendering.sampler import RenderSettings
from toyworld import captions, evaluation, world
from toyworld.base_config import REPORT_FILE
from toyworld.commands import DemoError, run_commands
from toyworld.demo_config import MODELS, PROMPT_SETS, SHEET_PROMPTS, DemoConfig, DemoPaths
from toyworld.results import format_results
from toyworld.workflow import (
    data_commands,
    evaluated_models,
    grid_pairs,
    model_commands,
    write_preserve_prompts,
)

logger = logging.getLogger(__name__)


def check_base(model_path: str | Path) -> Path:
    """The toy base folder, or a DemoError that says how to build one."""
    path = Path(model_path)
    if not (path / "model_index.json").is_file():
        raise DemoError(
            f"no toy base model at {path}: build it with `python demo/train_toy_base.py --output_dir {path}` "
            "(about 40 minutes on 2 CPU cores), or pass --model_path"
        )
    return path


def model_resolution(model_path: Path) -> int:
    """Pixels the base was trained at: the UNet's sample size times the VAE's downsampling."""
    unet = json.loads((model_path / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((model_path / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * vae_scale_factor(vae["block_out_channels"])


def set_sizes(config: DemoConfig, resolution: int) -> dict[str, tuple[int, int]]:
    """(width, height) of each prompt set's pictures: the wide set's own, the others --eval_width x
    --eval_height or else the base's square."""
    square = (config.eval_width or resolution, config.eval_height or resolution)
    wide = (config.wide_width, config.wide_height)
    return {name: wide if prompt_set.wide else square for name, prompt_set in PROMPT_SETS.items()}


def evaluate(config: DemoConfig, paths: DemoPaths) -> tuple[dict, str]:
    """Stage 4: losses and accuracies of the evaluated models, and the base's fingerprint; sample sheets in
    IMAGES/samples/."""
    lists = captions.read_prompt_lists(paths.domain / captions.PROMPTS_JSON)
    resolution = model_resolution(Path(config.model_path))
    evaluation.write_base_world_heldout(
        paths.base_heldout, config.loss_images, seed=config.seed + 300, size=resolution
    )
    evaluation.write_domain_nonsquare_heldout(
        paths.nonsquare_heldout, config.loss_images, seed=config.seed + 400, size=resolution
    )
    # Every model's loss on the same whole non-square pictures, each at the bucket the bucketed runs train
    # it at: the centre-crop run's own held-out loss (in its adapter file) is on crops, not comparable.
    buckets = tuple(BucketRange.scaled(resolution, None, None, None).sizes())
    loss_sets = {
        "base_world": evaluation.LossSet(str(paths.base_heldout)),
        "domain_nonsquare": evaluation.LossSet(str(paths.nonsquare_heldout), buckets),
    }
    settings = RenderSettings(
        num_images=config.eval_images,
        num_inference_steps=config.eval_steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        scheduler="ddim",
        max_batch=16,
    )
    adapters = [name for name in evaluated_models(config) if name != "original"]
    measured = evaluation.evaluate_models(
        config.model_path,
        {name: paths.adapter(name) for name in adapters},
        {name: lists[prompt_set.file] for name, prompt_set in PROMPT_SETS.items()},
        {
            name: replace(settings, width=width, height=height)
            for name, (width, height) in set_sizes(config, resolution).items()
        },
        loss_sets=loss_sets,
        loss_seed=config.seed,
        loss_batch_size=config.batch_size,
        jobs=config.jobs,
        device=config.device,
    )
    paths.samples.mkdir(parents=True, exist_ok=True)
    for set_name, pictures in measured.pictures.items():
        evaluation.sample_sheet(pictures, SHEET_PROMPTS).save(paths.samples / f"{set_name}.png")
    files = {name: read_adapter_file(paths.adapter(name)) for name in adapters}
    domain_loss = _domain_losses(
        {name: metadata.extra for name, (_, metadata) in files.items()}, reference=_reference_runs(config)
    )
    results = {
        name: {
            "adapter": str(paths.adapter(name)) if name != "original" else None,
            "heldout_loss": {"domain": domain_loss[name], **measured.loss[name]},
            "accuracy": measured.accuracy[name],
            **(adapter_facts(paths.adapter(name), *files[name]) if name != "original" else {}),
        }
        for name in evaluated_models(config)
    }
    return results, measured.fingerprint


def adapter_facts(path: Path, tensors: dict[str, torch.Tensor], metadata: AdapterMetadata) -> dict:
    """What an adapter costs: trainable parameters, file bytes, and the seconds of one training step."""
    return {
        "parameters": sum(tensor.numel() for tensor in tensors.values()),
        "file_bytes": path.stat().st_size,
        "seconds_per_step": metadata.extra.get("seconds_per_step"),
    }


def run_demo(config: DemoConfig, *, command: str = "") -> dict:
    """Run every stage; write WORK/results.json and WORK/results.md; return the results."""
    clock = time.perf_counter()
    model_path = check_base(config.model_path)
    paths = DemoPaths(Path(config.work_dir), Path(config.images_dir))
    paths.work.mkdir(parents=True, exist_ok=True)
    resolution = model_resolution(model_path)
    commands = run_commands(data_commands(config, paths), jobs=config.jobs, log_dir=paths.logs, clock=clock)
    write_preserve_prompts(config, paths)
    # Trainings and grids in one queue: a core that finishes a command starts the first one that is ready.
    commands |= run_commands(
        model_commands(config, paths, resolution), jobs=config.jobs, log_dir=paths.logs, clock=clock
    )
    evaluate_start, cpu_before = _since(clock), _cpu_seconds()
    print("evaluating: held-out losses and attribute accuracy of every model (in this process)", flush=True)
    models, fingerprint = evaluate(config, paths)
    timings = _stage_timings(commands)
    cpu_after = _cpu_seconds()
    cpu = None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 1)
    timings["evaluate"] = {"start_s": evaluate_start, "end_s": _since(clock), "cpu_s": cpu}
    timings["total"] = {"start_s": 0.0, "end_s": _since(clock), "cpu_s": None}
    print(f"  evaluate: {timings['evaluate']['end_s'] - evaluate_start:.0f} s; total {_since(clock):.0f} s")

    results = {
        "command": command,
        "base": _base_summary(model_path, fingerprint),
        "config": asdict(config),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "chance": world.chance_levels(),
        "models": models,
        "timings_s": {name: round(t["end_s"] - t["start_s"], 1) for name, t in timings.items()},
        "stages": timings,
        "commands": commands,
        "prompt_sets": {
            name: {"file": PROMPT_SETS[name].file, "width": width, "height": height}
            for name, (width, height) in set_sizes(config, resolution).items()
        },
        "artefacts": {
            "grids": [str(paths.images / kind) for pair in grid_pairs(config) for kind in pair],
            "tables": [str(paths.images / second / "report.md") for _, second in grid_pairs(config)],
            "samples": [str(paths.samples / f"{name}.png") for name in PROMPT_SETS],
        },
    }
    with atomic_write(paths.work / "results.json") as handle:
        json.dump(results, handle, indent=2)
    with atomic_write(paths.work / "results.md") as handle:
        handle.write(format_results(results))
    return results


def _reference_runs(config: DemoConfig) -> set[str]:
    """The evaluated runs that saw the held-out pictures as the demo's runs do (in buckets or cropped), or
    every run when none does (a sweep of the centre-crop run alone)."""
    adapters = [name for name in evaluated_models(config) if name != "original"]
    alike = [name for name in adapters if not (config.enable_bucket and MODELS[name].center_crop)]
    return set(alike or adapters)


def _domain_losses(extras: dict[str, dict], *, reference: set[str]) -> dict[str, float]:
    """Held-out domain losses from each adapter file's metadata extra; the original's once, as the
    `reference` runs measured it (a run without buckets measured it on centre crops)."""
    losses = {name: float(extra["val_loss_adapter"]) for name, extra in extras.items()}
    originals = [float(extra["val_loss_original"]) for name, extra in extras.items() if name in reference]
    if max(originals) - min(originals) > 1e-4 * max(abs(v) for v in originals):
        logger.warning("the runs measured different original held-out losses: %s", originals)
    return {"original": originals[0], **losses}


def _base_summary(model_path: Path, fingerprint: str) -> dict:
    """The base's folder and fingerprint and, when it has a training report, its own base-world accuracy."""
    summary: dict = {"path": str(model_path), "fingerprint": fingerprint, "base_world_accuracy": None}
    report = model_path / REPORT_FILE
    if report.is_file():
        trained = json.loads(report.read_text(encoding="utf-8"))
        summary["base_world_accuracy"] = trained.get("base_world_accuracy", {}).get("all")
        summary["training"] = {key: trained.get(key) for key in ("device_name", "seconds_total", "eval")}
    return summary


def _stage_timings(commands: dict[str, dict]) -> dict[str, dict]:
    """Each stage's span (first start to last end, since the demo's start) and its commands' CPU seconds."""
    stages: dict[str, dict] = {}
    for timing in commands.values():
        stage = stages.setdefault(timing["stage"], {"start_s": math.inf, "end_s": 0.0, "cpu_s": 0.0})
        stage["start_s"] = min(stage["start_s"], timing["start_s"])
        stage["end_s"] = max(stage["end_s"], timing["end_s"])
        stage["cpu_s"] = (
            None if timing["cpu_s"] is None or stage["cpu_s"] is None else stage["cpu_s"] + timing["cpu_s"]
        )
    return stages


def _cpu_seconds() -> float | None:
    """CPU seconds of this process and its finished children so far (None off POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 1)
