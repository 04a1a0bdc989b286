"""The toy demo: the write-up's whole workflow on the toy domain, run as a user runs it, then measured.

Stages, each timed:
1. data: demo/make_toy_domain.py, meta_file_converter.py (train and held-out), prompts_generator.py;
2. train: all four adapter kinds, each through its own script (mlp: text_encoder_util_mlp_transfer.py,
   prompt: text_encoder_util.py, vocab and lora: train_adapter.py --kind), then the MLP, prompt and LoRA
   again with --preserve_weight on base-world prompts (others than the ones the evaluation renders);
3. grids: each kind's rendering script (text_encoder_gen_show_mlp.py, text_encoder_gen_show.py,
   render_adapter.py) into IMAGES/KIND, the second of each pair with --compare_with the first: the
   write-up's table (prompt | MLP | Prompt | original) in IMAGES/prompt/report.md, Vocab | LoRA in
   IMAGES/lora/report.md;
4. evaluate, in this process: held-out denoising loss and attribute accuracy of the original model and
   every adapter, on domain prompts (short and long) and base-world prompts.

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
from dataclasses import asdict
from pathlib import Path

import torch

from altadapter.adapter_io import AdapterMetadata, read_adapter_file
from altadapter.adapters import get_kind
from altadapter.data.prompts import write_prompts
from altadapter.devices import vae_scale_factor
from altadapter.fileio import atomic_write
from altadapter.rendering.sampler import RenderSettings
from toyworld import captions, evaluation, world
from toyworld.base_config import REPORT_FILE
from toyworld.commands import Command, DemoError, run_commands, script
from toyworld.demo_config import MODELS, PROMPT_SETS, SHEET_PROMPTS, DemoConfig, DemoPaths
from toyworld.results import format_results

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


def data_commands(config: DemoConfig, paths: DemoPaths) -> list[Command]:
    """Stage "data": the toy domain, both conversions, the grid prompts."""
    commands = [
        Command(
            "make_toy_domain",
            "data",
            [
                script("demo/make_toy_domain.py"),
                *("--output_dir", str(paths.domain)),
                *("--num_train", str(config.num_train)),
                *("--num_heldout", str(config.num_heldout)),
                *("--num_prompts", str(config.eval_prompts)),
                *("--nonsquare_share", str(config.nonsquare_share)),
                *("--seed", str(config.seed)),
            ],
        )
    ]
    for split, out in (("train", paths.data), ("heldout", paths.heldout_data)):
        argv = [script("meta_file_converter.py"), "--image_dir", str(paths.domain / split)]
        argv += ["--output_dir", str(out), "--no_progress"]
        commands.append(Command(f"meta_file_converter_{split}", "data", argv, after=("make_toy_domain",)))
    argv = [
        script("prompts_generator.py"),
        *("--data_dir", str(paths.data)),
        *("--num_prompts", str(config.grid_prompts)),
        *("--prefix", ",".join(captions.DOMAIN_PREFIX)),
        *("--seed", str(config.seed)),
        # As many tags as a training caption: the write-up found the MLP needs prompts that long.
        *("--min_tags", str(captions.TRAIN_NUM_TAGS[0])),
        *("--max_tags", str(captions.TRAIN_NUM_TAGS[1])),
        *("--out", str(paths.prompts)),
    ]
    commands.append(Command("prompts_generator", "data", argv, after=("meta_file_converter_train",)))
    return commands


def adapter_argv(config: DemoConfig, kind: str) -> list[str]:
    """The flags that size an adapter of `kind`, and its learning rate."""
    sizes = {
        "mlp": ["--num_layers", str(config.num_layers)],
        "prompt": ["--num_prompts", str(config.num_prompts)],
        "vocab": ["--num_tags", str(config.num_tags)],
        "lora": ["--rank", str(config.rank)],
    }
    return [*sizes[kind], "--learning_rate", str(getattr(config, f"{kind}_learning_rate"))]


def train_command(config: DemoConfig, paths: DemoPaths, model: str, resolution: int) -> Command:
    """The training script run of one evaluated model, with the write-up's flag names."""
    kind, preserve = MODELS[model]
    name = paths.adapter(model).stem
    # Each kind's own script: the write-up's two for its kinds, train_adapter.py --kind for the others.
    script_name, *kind_argv = get_kind(kind).train_command.split()
    argv = [
        script(script_name),
        *kind_argv,
        *("--data_dir", str(paths.data)),
        *("--model_path", config.model_path),
        *("--ckpt_dir", str(paths.runs)),
        *("--batch_size", str(config.batch_size)),
        *("--mixed_precision", "no"),  # bf16 is slow on CPUs
        *("--max_train_steps", str(config.max_train_steps)),
        *("--resolution", str(resolution)),
        *("--name", name),
        *adapter_argv(config, kind),
        *("--validation_dir", str(paths.heldout_data)),  # the held-out losses land in the adapter file
        *("--validation_steps", str(config.max_train_steps)),
        *("--checkpointing_steps", str(config.max_train_steps)),
        *("--seed", str(config.seed)),
        *("--report_to", "none"),
    ]
    if preserve:
        argv += [
            *("--preserve_weight", str(config.preserve_weight)),
            *("--preserve_prompts", str(paths.preserve_prompts)),
        ]
    if config.enable_bucket:
        argv.append("--enable_bucket")
    if kind == "mlp" and config.mlp_caption_tag_dropout_rate > 0:
        argv += ["--caption_tag_dropout_rate", str(config.mlp_caption_tag_dropout_rate)]
    return Command(f"train_{model}", "train", argv)


# Grids in pairs: the second of each renders with --compare_with the first, so its report.md holds the
# table of both adapters and the original. Each kind renders through its own script.
GRID_PAIRS = (("mlp", "prompt"), ("vocab", "lora"))


def grid_commands(config: DemoConfig, paths: DemoPaths) -> list[Command]:
    """Stage "grids": each pair's first kind, then its second with the pair's table (it reads the first's
    render.json)."""
    commands = []
    for first, second in GRID_PAIRS:
        for kind in (first, second):
            argv = [
                script(get_kind(kind).render_command),
                *("--model_path", config.model_path),
                *("--adapter", str(paths.adapter(kind))),
                *("--prompts", str(paths.prompts)),
                *("--num_inference_steps", str(config.grid_steps)),
                *("--num_images", str(config.grid_images)),
                *("--scheduler", "ddim"),
                *("--guidance_scale", str(config.guidance_scale)),
                *("--seed", str(config.seed)),
                *("--output_dir", str(paths.images / kind)),
            ]
            after: tuple[str, ...] = (f"train_{kind}",)
            if kind == second:
                argv += ["--compare_with", str(paths.images / first)]
                after += (f"render_{first}",)
            commands.append(Command(f"render_{kind}", "grids", argv, after=after))
    return commands


TRAIN_ORDER = ("prompt", "lora", "vocab", "prompt_preserve", "lora_preserve", "mlp", "mlp_preserve")


def write_preserve_prompts(config: DemoConfig, paths: DemoPaths) -> list[str]:
    """Base-world prompts for the preservation penalty, leaving out every prompt the evaluation renders."""
    evaluated = {p.text for p in _prompt_lists(paths)[PROMPT_SETS["base_world"]]}
    candidates = captions.base_world_prompts(config.preserve_prompts * 2, seed=config.seed + 200)
    prompts = list(dict.fromkeys(p.text for p in candidates if p.text not in evaluated))
    prompts = prompts[: config.preserve_prompts]
    write_prompts(paths.preserve_prompts, prompts)
    return prompts


def evaluate(config: DemoConfig, paths: DemoPaths) -> tuple[dict, str]:
    """Stage 4: losses and accuracies of every model, and the base's fingerprint; sample sheets in IMAGES/samples/."""
    lists = _prompt_lists(paths)
    evaluation.write_base_world_heldout(
        paths.base_heldout,
        config.loss_images,
        seed=config.seed + 300,
        size=model_resolution(Path(config.model_path)),
    )
    settings = RenderSettings(
        num_images=config.eval_images,
        num_inference_steps=config.eval_steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        scheduler="ddim",
        max_batch=16,
        height=config.eval_height,
        width=config.eval_width,
    )
    measured = evaluation.evaluate_models(
        config.model_path,
        {name: paths.adapter(name) for name in MODELS if name != "original"},
        {set_name: lists[file_name] for set_name, file_name in PROMPT_SETS.items()},
        settings,
        loss_dir=paths.base_heldout,
        loss_seed=config.seed,
        loss_batch_size=config.batch_size,
        jobs=config.jobs,
        device=config.device,
    )
    paths.samples.mkdir(parents=True, exist_ok=True)
    for set_name, pictures in measured.pictures.items():
        evaluation.sample_sheet(pictures, SHEET_PROMPTS).save(paths.samples / f"{set_name}.png")
    files = {name: read_adapter_file(paths.adapter(name)) for name in MODELS if name != "original"}
    domain_loss = _domain_losses({name: metadata.extra for name, (_, metadata) in files.items()})
    results = {
        name: {
            "adapter": str(paths.adapter(name)) if name != "original" else None,
            "heldout_loss": {"domain": domain_loss[name], "base_world": measured.loss[name]},
            "accuracy": measured.accuracy[name],
            **(adapter_facts(paths.adapter(name), *files[name]) if name != "original" else {}),
        }
        for name in MODELS
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
    # The runs whose encoder runs every step (prompt, vocab, LoRA) first, the cheaper MLP runs and the
    # grids (a few seconds each) fill in after them, so both cores stay busy to the end.
    trainings = [train_command(config, paths, name, resolution) for name in TRAIN_ORDER]
    commands |= run_commands(
        [*trainings, *grid_commands(config, paths)], jobs=config.jobs, log_dir=paths.logs, clock=clock
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
        "artefacts": {
            "grids": [str(paths.images / kind) for pair in GRID_PAIRS for kind in pair],
            "tables": [str(paths.images / second / "report.md") for _, second in GRID_PAIRS],
            "samples": [str(paths.samples / f"{name}.png") for name in PROMPT_SETS],
        },
    }
    with atomic_write(paths.work / "results.json") as handle:
        json.dump(results, handle, indent=2)
    with atomic_write(paths.work / "results.md") as handle:
        handle.write(format_results(results))
    return results


def _prompt_lists(paths: DemoPaths) -> dict[str, list[world.Prompt]]:
    return captions.read_prompt_lists(paths.domain / captions.PROMPTS_JSON)


def _domain_losses(extras: dict[str, dict]) -> dict[str, float]:
    """Held-out domain losses from each adapter file's metadata extra; the original's, which every run
    measured, once."""
    losses: dict[str, float] = {}
    originals = []
    for name, extra in extras.items():
        losses[name] = float(extra["val_loss_adapter"])
        originals.append(float(extra["val_loss_original"]))
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
