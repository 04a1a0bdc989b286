"""The toy demo: the write-up's whole workflow on the toy domain, run as a user runs it, then measured.

Stages, each timed:
1. data: demo/make_toy_domain.py, meta_file_converter.py (train and held-out), prompts_generator.py;
2. train: text_encoder_util_mlp_transfer.py and text_encoder_util.py, first plain, then with
   --preserve_weight on base-world prompts (others than the ones the evaluation renders);
3. grids: text_encoder_gen_show_mlp.py into IMAGES/mlp, text_encoder_gen_show.py --compare_with into
   IMAGES/prompt, whose report.md holds the write-up's table (prompt | MLP | Prompt | original);
4. evaluate, in this process: held-out denoising loss and attribute accuracy of the original model, both
   adapters and both preserving adapters, on domain prompts (short and long) and base-world prompts.

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
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from altadapter import toy_eval, toy_world
from altadapter.adapter_io import read_adapter_file
from altadapter.demo_results import format_results
from altadapter.fileio import atomic_write
from altadapter.prompts import write_prompts
from altadapter.render import RenderSettings
from altadapter.toy_training import REPORT_FILE, ToyBaseConfig

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TOY_BASE = ToyBaseConfig()  # the toy base samples with DDIM at this guidance scale
# Evaluated models, in table order: name -> (adapter kind, with preservation). "original" has no adapter.
MODELS: dict[str, tuple[str | None, bool]] = {
    "original": (None, False),
    "mlp": ("mlp", False),
    "prompt": ("prompt", False),
    "mlp_preserve": ("mlp", True),
    "prompt_preserve": ("prompt", True),
}
# Prompt sets, in table order: name -> the prompt list of demo/make_toy_domain.py it reads.
PROMPT_SETS = {
    "domain_short": "domain_prompts_short.txt",
    "domain_long": "domain_prompts_long.txt",
    "base_world": "base_prompts.txt",
}
RUN_NAMES = {"mlp": "toy-mlp", "prompt": "toy-prompt"}
SHEET_PROMPTS = 12  # prompts per evaluation sample sheet


class DemoError(RuntimeError):
    """A demo that cannot run or whose step failed; the message says which and what to do."""


@dataclass(frozen=True)
class DemoConfig:
    """Every size, count and step of a demo run; the defaults fit 15 minutes on 2 CPU cores."""

    model_path: str = "demo/toy_base"
    work_dir: str = "demo_out"
    images_dir: str = "images"
    seed: int = 0
    num_train: int = 900  # training images, 10 per attribute combination
    num_heldout: int = 45  # held-out domain images: the training scripts' --validation_dir
    grid_prompts: int = 6  # prompts_generator.py prompts rendered into the write-up's grids
    grid_images: int = 4
    grid_steps: int = 20
    max_train_steps: int = 150  # per adapter, four runs
    batch_size: int = 16
    mlp_learning_rate: float = 1e-3
    prompt_learning_rate: float = 1e-2
    num_layers: int = 1
    num_prompts: int = 100  # the write-up's 100 vectors; they and a long caption fit the toy's 160 tokens
    preserve_weight: float = 1.0
    preserve_prompts: int = 180  # base-world prompts for the penalty, none of them among the evaluation's
    eval_prompts: int = 30  # prompts per evaluation set
    eval_images: int = 1  # pictures per evaluation prompt and model
    eval_steps: int = 20
    guidance_scale: float = TOY_BASE.guidance_scale
    loss_images: int = 45  # base-world held-out pictures for the out-of-domain loss
    jobs: int = 2  # commands run side by side
    device: str = "cpu"  # of the evaluation; the scripts choose their own (accelerate, --device auto)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, float) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
            if isinstance(value, int) and value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be at least {0 if name == 'seed' else 1}, got {value}")


# The --smoke sizes: every stage and artefact, seconds of compute (the end-to-end test runs these).
SMOKE = {
    "num_train": 12,
    "num_heldout": 4,
    "grid_prompts": 2,
    "grid_images": 1,
    "grid_steps": 2,
    "max_train_steps": 2,
    "batch_size": 2,
    "num_prompts": 4,
    "preserve_prompts": 6,
    "eval_prompts": 3,
    "eval_steps": 2,
    "loss_images": 3,
}


@dataclass
class DemoPaths:
    """Where each stage writes, under the work and images folders."""

    work: Path
    images: Path
    domain: Path = field(init=False)  # make_toy_domain.py output: train/, heldout/, prompt lists
    data: Path = field(init=False)
    heldout_data: Path = field(init=False)
    prompts: Path = field(init=False)  # prompts_generator.py output, rendered into the grids
    preserve_prompts: Path = field(init=False)
    runs: Path = field(init=False)
    base_heldout: Path = field(init=False)
    logs: Path = field(init=False)
    samples: Path = field(init=False)

    def __post_init__(self) -> None:
        self.domain = self.work / "toy_domain"
        self.data = self.work / "data"
        self.heldout_data = self.work / "heldout_data"
        self.prompts = self.work / "prompts.txt"
        self.preserve_prompts = self.work / "preserve_prompts.txt"
        self.runs = self.work / "runs"
        self.base_heldout = self.work / "base_world_heldout"
        self.logs = self.work / "logs"
        self.samples = self.work / "samples"

    def adapter(self, model: str) -> Path:
        kind, preserve = MODELS[model]
        name = RUN_NAMES[kind] + ("-preserve" if preserve else "")
        return self.runs / name / f"{name}.safetensors"


@dataclass
class Command:
    """One script run: its name (and log file's), its stage, argv after the interpreter, what it needs first."""

    name: str
    stage: str
    argv: list[str]
    after: tuple[str, ...] = ()

    def shown(self) -> str:
        """The command as a user types it from the current folder."""
        return shlex.join(["python", *self.argv])


def check_base(model_path: str | Path) -> Path:
    """The toy base folder, or a DemoError that says how to build one."""
    path = Path(model_path)
    if not (path / "model_index.json").is_file():
        raise DemoError(
            f"no toy base model at {path}: build it with `python demo/train_toy_base.py --output_dir {path}` "
            "(about 4 minutes on one GPU; its --help shows a CPU run), or pass --model_path"
        )
    return path


def model_resolution(model_path: Path) -> int:
    """Pixels the base was trained at: the UNet's sample size times the VAE's downsampling."""
    unet = json.loads((model_path / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((model_path / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def script(name: str) -> str:
    """A script of this repository as a user would name it from the current folder."""
    path = ROOT / name
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def run_commands(commands: Sequence[Command], *, jobs: int, log_dir: Path, clock: float) -> dict[str, dict]:
    """Run commands, up to `jobs` at a time, each once the ones it comes `after` have finished.

    Output goes to log_dir/NAME.log. Each command gets OMP_NUM_THREADS = this process's threads / jobs.
    Returns per command its stage, start and end (seconds since `clock`) and CPU seconds (None where the
    platform cannot tell). Raises DemoError with the end of the log when a command fails, after
    stopping the others.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // jobs))}
    pending, running, done = list(commands), {}, {}
    while pending or running:
        for command in [c for c in pending if all(name in done for name in c.after)][: jobs - len(running)]:
            pending.remove(command)
            print(f"$ {command.shown()}", flush=True)
            log = open(log_dir / f"{command.name}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            process = subprocess.Popen(
                [sys.executable, *command.argv], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running[command.name] = (command, process, log, time.perf_counter())
        if not running:
            raise DemoError(f"commands wait for ones that never run: {[c.name for c in pending]}")
        time.sleep(0.1)
        for name, (command, process, log, started) in list(running.items()):
            cpu = _reap(process)
            if process.returncode is None:
                continue
            log.close()
            del running[name]
            done[name] = {
                "stage": command.stage,
                "start_s": round(started - clock, 1),
                "end_s": round(time.perf_counter() - clock, 1),
                "cpu_s": None if cpu is None else round(cpu, 1),
            }
            seconds = done[name]["end_s"] - done[name]["start_s"]
            print(
                f"  {name}: {seconds:.0f} s" + (f" (CPU {cpu:.0f} s)" if cpu is not None else ""), flush=True
            )
            if process.returncode != 0:
                for _, other, other_log, _ in running.values():
                    other.terminate()
                    other.wait()
                    other_log.close()
                raise DemoError(
                    f"`{command.shown()}` failed (exit {process.returncode}); the end of "
                    f"{log_dir / command.name}.log:\n" + _tail(log_dir / f"{command.name}.log")
                )
    return done


def _reap(process: subprocess.Popen) -> float | None:
    """Set `process.returncode` if it has ended; its CPU seconds where the OS reports them (POSIX)."""
    if not hasattr(os, "wait4"):
        process.poll()
        return None
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


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
        *("--prefix", ",".join(toy_world.DOMAIN_PREFIX)),
        *("--seed", str(config.seed)),
        # As many tags as a training caption: the write-up found the MLP needs prompts that long.
        *("--min_tags", str(toy_world.TRAIN_NUM_TAGS[0])),
        *("--max_tags", str(toy_world.TRAIN_NUM_TAGS[1])),
        *("--out", str(paths.prompts)),
    ]
    commands.append(Command("prompts_generator", "data", argv, after=("meta_file_converter_train",)))
    return commands


def train_command(config: DemoConfig, paths: DemoPaths, model: str, resolution: int) -> Command:
    """The training script run of one evaluated model, with the write-up's flag names."""
    kind, preserve = MODELS[model]
    name = paths.adapter(model).stem
    argv = [
        script("text_encoder_util_mlp_transfer.py" if kind == "mlp" else "text_encoder_util.py"),
        *("--data_dir", str(paths.data)),
        *("--model_path", config.model_path),
        *("--ckpt_dir", str(paths.runs)),
        *("--batch_size", str(config.batch_size)),
        *("--mixed_precision", "no"),  # bf16 is slow on CPUs
        *("--max_train_steps", str(config.max_train_steps)),
        *("--resolution", str(resolution)),
        *("--name", name),
    ]
    if kind == "mlp":
        argv += ["--num_layers", str(config.num_layers), "--learning_rate", str(config.mlp_learning_rate)]
    else:
        argv += [
            "--num_prompts",
            str(config.num_prompts),
            "--learning_rate",
            str(config.prompt_learning_rate),
        ]
    argv += [
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
    return Command(f"train_{model}", "train", argv)


def grid_commands(config: DemoConfig, paths: DemoPaths) -> list[Command]:
    """Stage "grids": the MLP grids, then the prompt grids with the full table (it reads the MLP's render.json)."""
    commands = []
    for kind in ("mlp", "prompt"):
        argv = [
            script("text_encoder_gen_show_mlp.py" if kind == "mlp" else "text_encoder_gen_show.py"),
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
        after = ("train_mlp",)
        if kind == "prompt":
            argv += ["--compare_with", str(paths.images / "mlp")]
            after = ("train_prompt", "render_mlp")
        commands.append(Command(f"render_{kind}", "grids", argv, after=after))
    return commands


def write_preserve_prompts(config: DemoConfig, paths: DemoPaths) -> list[str]:
    """Base-world prompts for the preservation penalty, leaving out every prompt the evaluation renders."""
    evaluated = {p.text for p in _prompt_lists(paths)[PROMPT_SETS["base_world"]]}
    candidates = toy_world.base_world_prompts(config.preserve_prompts * 2, seed=config.seed + 200)
    prompts = list(dict.fromkeys(p.text for p in candidates if p.text not in evaluated))
    prompts = prompts[: config.preserve_prompts]
    write_prompts(paths.preserve_prompts, prompts)
    return prompts


def evaluate(config: DemoConfig, paths: DemoPaths) -> tuple[dict, str]:
    """Stage 4: losses and accuracies of every model, and the base's fingerprint; sample sheets in WORK/samples/."""
    lists = _prompt_lists(paths)
    toy_eval.write_base_world_heldout(
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
    )
    evaluation = toy_eval.evaluate_models(
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
    for set_name, pictures in evaluation.pictures.items():
        toy_eval.sample_sheet(pictures, SHEET_PROMPTS).save(paths.samples / f"{set_name}.png")
    domain_loss = _domain_losses(paths)
    results = {
        name: {
            "adapter": str(paths.adapter(name)) if name != "original" else None,
            "heldout_loss": {"domain": domain_loss[name], "base_world": evaluation.loss[name]},
            "accuracy": evaluation.accuracy[name],
        }
        for name in MODELS
    }
    return results, evaluation.fingerprint


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
    # This order keeps both cores busy on the toy base (a prompt run takes ~1.25 MLP runs, a grid ~0.4).
    train = {name: train_command(config, paths, name, resolution) for name in MODELS if name != "original"}
    render_mlp, render_prompt = grid_commands(config, paths)
    order = [train["prompt"], train["mlp"], train["prompt_preserve"], render_mlp, train["mlp_preserve"]]
    commands |= run_commands([*order, render_prompt], jobs=config.jobs, log_dir=paths.logs, clock=clock)
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
        "chance": toy_world.chance_levels(),
        "models": models,
        "timings_s": {name: round(t["end_s"] - t["start_s"], 1) for name, t in timings.items()},
        "stages": timings,
        "commands": commands,
        "artefacts": {
            "grids": [str(paths.images / "mlp"), str(paths.images / "prompt")],
            "full_table": str(paths.images / "prompt" / "report.md"),
            "samples": [str(paths.samples / f"{name}.png") for name in PROMPT_SETS],
        },
    }
    with atomic_write(paths.work / "results.json") as handle:
        json.dump(results, handle, indent=2)
    with atomic_write(paths.work / "results.md") as handle:
        handle.write(format_results(results))
    return results


def _prompt_lists(paths: DemoPaths) -> dict[str, list[toy_world.Prompt]]:
    return toy_world.read_prompt_lists(paths.domain / toy_world.PROMPTS_JSON)


def _domain_losses(paths: DemoPaths) -> dict[str, float]:
    """Held-out domain losses from the adapter files' metadata; the original's, which every run measured, once."""
    losses: dict[str, float] = {}
    originals = []
    for name in MODELS:
        if name == "original":
            continue
        extra = read_adapter_file(paths.adapter(name))[1].extra
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


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
