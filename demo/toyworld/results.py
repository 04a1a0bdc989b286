"""The toy demo's results as markdown (WORK_DIR/results.md, quoted by the README) from its results.json."""

from __future__ import annotations

from altadapter.rendering.report import markdown_row
from toyworld import captions, world

MODEL_TITLES = {
    "original": "original",
    "mlp": "MLP",
    "prompt": "Prompt",
    "vocab": "Vocab",
    "lora": "LoRA",
    "mlp_preserve": "MLP + preserve",
    "prompt_preserve": "Prompt + preserve",
    "lora_preserve": "LoRA + preserve",
}
SET_TITLES = {
    "domain_short": f"domain, short ({captions.SHORT_NUM_TAGS} tags)",
    "domain_long": f"domain, long ({captions.TRAIN_NUM_TAGS[0]}-{captions.TRAIN_NUM_TAGS[1]} tags)",
    "base_world": "base world (out of domain)",
}
LOSS_TITLES = {"domain": "held-out loss, domain", "base_world": "held-out loss, base world"}


def format_results(results: dict) -> str:
    """results.md: how to reproduce, the summary table, accuracy per attribute, artefacts, timings."""
    config, chance = results["config"], results["chance"]
    models = results["models"]
    sets = list(next(iter(models.values()))["accuracy"])
    lines = ["# Toy demo results", ""]
    if results["command"]:
        lines += ["Reproduce with:", "", "```", results["command"], "```", ""]
    lines += [_setting_line(results), ""]
    lines += [
        "Accuracy: the share of pictures that show all three attributes (shape colour, background colour, "
        "shape) the prompt names, read by `world.classify_image` (nearest palette colour per pixel; "
        f"border ring = background; fill of the bounding box = shape). Chance: {_pct(chance['all'])} "
        f"(per attribute: colours {_pct(chance['fg'])}, shape {_pct(chance['shape'])}). Held-out loss: the "
        "training scripts' denoising loss at fixed timesteps and noise, on held-out domain pictures with "
        "their tags, and on base-world pictures with plain-word captions.",
        "",
    ]
    header = ["model", *LOSS_TITLES.values(), *(f"accuracy, {SET_TITLES.get(name, name)}" for name in sets)]
    lines += [markdown_row(header), markdown_row(["---"] + ["---:"] * (len(header) - 1))]
    for name, model in models.items():
        cells = [MODEL_TITLES.get(name, name)]
        cells += [f"{model['heldout_loss'][where]:.4f}" for where in LOSS_TITLES]
        cells += [_pct(model["accuracy"][set_name]["all"]) for set_name in sets]
        lines.append(markdown_row(cells))
    lines.append(markdown_row(["chance", *([""] * len(LOSS_TITLES)), *([_pct(chance["all"])] * len(sets))]))

    lines += ["", *_cost_table(models)]
    lines += ["", "Accuracy per attribute (shape colour / background colour / shape):", ""]
    lines += [markdown_row(["model", *(SET_TITLES.get(name, name) for name in sets)])]
    lines.append(markdown_row(["---"] + ["---:"] * len(sets)))
    for name, model in models.items():
        cells = [_attributes(model["accuracy"][set_name]) for set_name in sets]
        lines.append(markdown_row([MODEL_TITLES.get(name, name), *cells]))
    lines.append(markdown_row(["chance", *([_attributes(chance)] * len(sets))]))

    artefacts = results["artefacts"]
    lines += [
        "",
        "Grids of each kind (the write-up's file names): "
        + ", ".join(f"`{path}/`" for path in artefacts["grids"])
        + "; the write-up's table (prompt | MLP | Prompt | original) and the same for the new kinds: "
        + ", ".join(f"`{path}`" for path in artefacts["tables"])
        + ". "
        "Evaluation pictures (a row per model, the first picture of the first prompts): "
        + ", ".join(f"`{path}`" for path in artefacts["samples"])
        + ".",
        "",
        f"## Time ({results['machine']['cpus']} CPUs, {config['jobs']} commands side by side)",
        "",
        "Seconds since the start; stages overlap (a grid starts once its adapter is trained). "
        "CPU: seconds its processes computed.",
        "",
        markdown_row(["stage or command", "from", "to", "CPU"]),
        markdown_row(["---", "---:", "---:", "---:"]),
    ]
    for name, timing in [*results["stages"].items(), *results["commands"].items()]:
        cpu = "" if timing["cpu_s"] is None else f"{timing['cpu_s']:.0f}"
        lines.append(markdown_row([name, f"{timing['start_s']:.0f}", f"{timing['end_s']:.0f}", cpu]))
    return "\n".join(lines) + "\n"


def _cost_table(models: dict) -> list[str]:
    """Trainable parameters, file size and the time of a training step, as a ratio to the MLP's."""
    mlp_step = models.get("mlp", {}).get("seconds_per_step")
    lines = [
        "What each adapter costs (a step's time is the median of its run, as a ratio to the MLP's; runs "
        "went two at a time, one thread each):",
        "",
        markdown_row(["model", "trainable parameters", "file", "ms per step", "step time / MLP's"]),
        markdown_row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for name, model in models.items():
        if "parameters" not in model:
            continue
        step = model["seconds_per_step"]
        cells = [MODEL_TITLES.get(name, name), f"{model['parameters']:,}", _size(model["file_bytes"])]
        cells += ["" if step is None else f"{1000 * step:.1f}"]
        cells += ["" if step is None or not mlp_step else f"{step / mlp_step:.2f}x"]
        lines.append(markdown_row(cells))
    return lines


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1024:.1f} KB" if num_bytes < 1024**2 else f"{num_bytes / 1024**2:.2f} MB"


def _setting_line(results: dict) -> str:
    config, base = results["config"], results["base"]
    trained = (
        f"; it draws {_pct(base['base_world_accuracy'])} of base-world prompts right by its training report"
        if base.get("base_world_accuracy") is not None
        else ""
    )
    shapes = f"{_pct(config['nonsquare_share'])} of them 2:1 or 1:2, " + (
        "in aspect-ratio buckets" if config["enable_bucket"] else "as square centre crops"
    )
    dropout = config["mlp_caption_tag_dropout_rate"]
    dropout = f", tag dropout {dropout:g}" if dropout else ""
    size = f" at {config['eval_width']}x{config['eval_height']} pixels" if config["eval_width"] else ""
    return (
        f"Base `{config['model_path']}` (fingerprint {base['fingerprint']}{trained}). Each adapter: "
        f"{config['max_train_steps']} steps at batch {config['batch_size']} on {config['num_train']} "
        f"pictures ({shapes}; MLP lr {config['mlp_learning_rate']:g}, {config['num_layers']} layer(s){dropout}; prompt lr "
        f"{config['prompt_learning_rate']:g}, {config['num_prompts']} vectors; vocab lr "
        f"{config['vocab_learning_rate']:g}, up to {config['num_tags']} tags; LoRA lr "
        f"{config['lora_learning_rate']:g}, rank {config['rank']}); preservation weight "
        f"{config['preserve_weight']:g} on {config['preserve_prompts']} base-world prompts that the "
        f"evaluation does not use. Evaluation: {config['eval_prompts']} prompts per set x "
        f"{config['eval_images']} picture(s){size}, DDIM {config['eval_steps']} steps, guidance "
        f"{config['guidance_scale']:g}, the same noise for every model."
    )


def _attributes(scores: dict) -> str:
    return " / ".join(_pct(scores[name]) for name in world.ATTRIBUTE_NAMES)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
