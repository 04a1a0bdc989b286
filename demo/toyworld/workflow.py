"""The demo's script runs, as a user types them: the data stage, one training run per evaluated adapter,
and the write-up's grids; restricted to the models a run asks for (DemoConfig.models)."""

from __future__ import annotations

from altadapter.adapters import get_kind
from altadapter.data.prompts import write_prompts
from toyworld import captions
from toyworld.commands import Command, script
from toyworld.demo_config import MODELS, PROMPT_SETS, DemoConfig, DemoPaths

# Grids in pairs: the second of each renders with --compare_with the first, so its report.md holds the
# table of both adapters and the original. Each kind renders through its own script.
GRID_PAIRS = (("mlp", "prompt"), ("vocab", "lora"))
# The training queue, longest runs first: the runs whose encoder runs every step (prompt, vocab, LoRA, and
# the MLP with tag dropout, whose every caption is new), then the MLP runs that cache it. The grids (a few
# seconds each) fill in after them, so both cores stay busy to the end.
TRAIN_ORDER = (
    "prompt",
    "lora",
    "vocab",
    "prompt_preserve",
    "lora_preserve",
    "mlp_tag_dropout",
    "mlp",
    "mlp_preserve",
    "mlp_center_crop",
)


def evaluated_models(config: DemoConfig) -> list[str]:
    """The original and the adapter runs the config asks for, in table order."""
    return [name for name in MODELS if name == "original" or name in config.models]


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


def write_preserve_prompts(config: DemoConfig, paths: DemoPaths) -> list[str]:
    """Base-world prompts for the preservation penalty, leaving out every prompt the evaluation renders."""
    lists = captions.read_prompt_lists(paths.domain / captions.PROMPTS_JSON)
    evaluated = {p.text for p in lists[PROMPT_SETS["base_world"].file]}
    candidates = captions.base_world_prompts(config.preserve_prompts * 2, seed=config.seed + 200)
    prompts = list(dict.fromkeys(p.text for p in candidates if p.text not in evaluated))
    prompts = prompts[: config.preserve_prompts]
    write_prompts(paths.preserve_prompts, prompts)
    return prompts


def model_commands(config: DemoConfig, paths: DemoPaths, resolution: int) -> list[Command]:
    """Stages "train" and "grids" of the models the config asks for: one queue, trainings first."""
    trainings = [
        train_command(config, paths, name, resolution) for name in TRAIN_ORDER if name in config.models
    ]
    return [*trainings, *grid_commands(config, paths)]


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
    spec = MODELS[model]
    if spec.kind is None:
        raise ValueError(f"{model} is not an adapter run")
    name = paths.adapter(model).stem
    # Each kind's own script: the write-up's two for its kinds, train_adapter.py --kind for the others.
    script_name, *kind_argv = get_kind(spec.kind).train_command.split()
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
        *adapter_argv(config, spec.kind),
        *("--validation_dir", str(paths.heldout_data)),  # the held-out losses land in the adapter file
        *("--validation_steps", str(config.max_train_steps)),
        *("--checkpointing_steps", str(config.max_train_steps)),
        *("--seed", str(config.seed)),
        *("--report_to", "none"),
    ]
    if spec.preserve:
        argv += [
            *("--preserve_weight", str(config.preserve_weight)),
            *("--preserve_prompts", str(paths.preserve_prompts)),
        ]
    if config.enable_bucket and not spec.center_crop:
        argv.append("--enable_bucket")
    if spec.tag_dropout:
        argv += ["--caption_tag_dropout_rate", str(config.mlp_tag_dropout_rate)]
    return Command(f"train_{model}", "train", argv)


def grid_pairs(config: DemoConfig) -> list[tuple[str, str]]:
    """The grid pairs whose both models the config asks for."""
    return [pair for pair in GRID_PAIRS if all(kind in config.models for kind in pair)]


def grid_commands(config: DemoConfig, paths: DemoPaths) -> list[Command]:
    """Stage "grids": each pair's first kind, then its second with the pair's table (it reads the first's
    render.json)."""
    commands = []
    for first, second in grid_pairs(config):
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
