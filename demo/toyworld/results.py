"""The toy demo's results as markdown (WORK_DIR/results.md, quoted by the README) from its results.json."""

from __future__ import annotations

from altadapter.rendering.report import markdown_row
from toyworld import captions, world
from toyworld.demo_config import ADAPTER_MODELS

MODEL_TITLES = {
    "original": "original",
    "mlp": "MLP",
    "prompt": "Prompt",
    "vocab": "Vocab",
    "lora": "LoRA",
    "mlp_preserve": "MLP + preserve",
    "prompt_preserve": "Prompt + preserve",
    "lora_preserve": "LoRA + preserve",
    "mlp_tag_dropout": "MLP, tag dropout",
    "mlp_center_crop": "MLP, centre crop",
}
SET_TITLES = {
    "domain_short": f"domain, short ({captions.SHORT_NUM_TAGS} tags)",
    "domain_long": f"domain, long ({captions.TRAIN_NUM_TAGS[0]}-{captions.TRAIN_NUM_TAGS[1]} tags)",
    "base_world": "base world (out of domain)",
}
WIDE_SETS = {"domain_long_wide": "domain_long"}  # a set of wide pictures -> the set whose prompts it renders
LOSS_TITLES = {
    "domain": "held-out loss, domain",
    "base_world": "held-out loss, base world",
    "domain_nonsquare": "held-out loss, domain, 2:1 and 1:2",
}


def format_results(results: dict) -> str:
    """results.md: how to reproduce, the summary table, accuracy per attribute, artefacts, timings."""
    config, chance = results["config"], results["chance"]
    models, titles = results["models"], set_titles(results["prompt_sets"])
    lines = ["# Toy demo results", ""]
    if results["command"]:
        lines += ["Reproduce with:", "", "```", results["command"], "```", ""]
    lines += [_setting_line(results), "", _variants_line(results, titles), ""]
    lines += [
        "Accuracy: the share of pictures that show all three attributes (shape colour, background colour, "
        "shape) the prompt names, read by `world.classify_image` (nearest palette colour per pixel; "
        f"border ring = background; fill of the bounding box = shape). Chance: {_pct(chance['all'])} "
        f"(per attribute: colours {_pct(chance['fg'])}, shape {_pct(chance['shape'])}). Held-out loss (the "
        "training scripts' denoising loss at fixed timesteps and noise) on held-out domain pictures with "
        "their tags (the training script's own, from each adapter file), on base-world pictures with "
        f"plain-word captions, and on {config['loss_images']} other domain pictures, all 2:1 or 1:2, each "
        "whole at its nearest aspect-ratio bucket, the same for every model.",
        "",
    ]
    header = ["model", *LOSS_TITLES.values(), *(f"accuracy, {title}" for title in titles.values())]
    lines += [markdown_row(header), markdown_row(["---"] + ["---:"] * (len(header) - 1))]
    for name, model in models.items():
        cells = [MODEL_TITLES.get(name, name)]
        cells += [f"{model['heldout_loss'][where]:.4f}" for where in LOSS_TITLES]
        cells += [_pct(model["accuracy"][set_name]["all"]) for set_name in titles]
        lines.append(markdown_row(cells))
    lines.append(markdown_row(["chance", *([""] * len(LOSS_TITLES)), *([_pct(chance["all"])] * len(titles))]))
    lines += [
        "",
        *_cost_table(models),
        "",
        *_attribute_table(models, titles, chance),
        "",
        _artefacts_line(results),
    ]
    lines += [
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


def set_titles(prompt_sets: dict[str, dict]) -> dict[str, str]:
    """Each prompt set's title, in table order; a wide set's names its prompts' set and its size."""
    return {
        name: f"{SET_TITLES[WIDE_SETS[name]]}, {size['width']}x{size['height']}"
        if name in WIDE_SETS
        else SET_TITLES.get(name, name)
        for name, size in prompt_sets.items()
    }


def _attribute_table(models: dict, titles: dict[str, str], chance: dict) -> list[str]:
    lines = ["Accuracy per attribute (shape colour / background colour / shape):", ""]
    lines += [markdown_row(["model", *titles.values()]), markdown_row(["---"] + ["---:"] * len(titles))]
    for name, model in models.items():
        cells = [_attributes(model["accuracy"][set_name]) for set_name in titles]
        lines.append(markdown_row([MODEL_TITLES.get(name, name), *cells]))
    lines.append(markdown_row(["chance", *([_attributes(chance)] * len(titles))]))
    return lines


def _artefacts_line(results: dict) -> str:
    artefacts = results["artefacts"]
    grids = (
        "Grids of each kind (the write-up's file names): "
        + ", ".join(f"`{path}/`" for path in artefacts["grids"])
        + "; the write-up's table (prompt | MLP | Prompt | original) and the same for the new kinds: "
        + ", ".join(f"`{path}`" for path in artefacts["tables"])
        + ". "
        if artefacts["grids"]
        else ""
    )
    return (
        grids
        + "Evaluation pictures (a row per model, the first picture of the first prompts): "
        + ", ".join(f"`{path}`" for path in artefacts["samples"])
        + "."
    )


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
    return (
        f"Base `{config['model_path']}` (fingerprint {base['fingerprint']}{trained}). Each adapter: "
        f"{config['max_train_steps']} steps at batch {config['batch_size']} on {config['num_train']} "
        f"pictures ({shapes}; MLP lr {config['mlp_learning_rate']:g}, {config['num_layers']} layer(s); prompt lr "
        f"{config['prompt_learning_rate']:g}, {config['num_prompts']} vectors; vocab lr "
        f"{config['vocab_learning_rate']:g}, up to {config['num_tags']} tags; LoRA lr "
        f"{config['lora_learning_rate']:g}, rank {config['rank']}); preservation weight "
        f"{config['preserve_weight']:g} on {config['preserve_prompts']} base-world prompts that the "
        f"evaluation does not use. Evaluation: {config['eval_prompts']} prompts per set x "
        f"{config['eval_images']} picture(s), DDIM {config['eval_steps']} steps, guidance "
        f"{config['guidance_scale']:g}, the same noise for every model."
    )


def _variants_line(results: dict, titles: dict[str, str]) -> str:
    """Which runs this is, each prompt set's picture size, and what the MLP variants change against the MLP."""
    config, models = results["config"], results["models"]
    lines = []
    if set(config["models"]) != set(ADAPTER_MODELS):
        names = ", ".join(MODEL_TITLES.get(name, name) for name in models if name != "original")
        lines.append(
            f"Only some runs (`--models`): {names}, and the original; the README's tables come from the "
            "full run."
        )
    by_size: dict[str, list[str]] = {}
    for name, size in results["prompt_sets"].items():
        again = f' (the prompts of "{titles[WIDE_SETS[name]]}" again)' if name in WIDE_SETS else ""
        by_size.setdefault(f"{size['width']}x{size['height']}", []).append(f'"{titles[name]}"{again}')
    sizes = "; ".join(f"of {size} pixels for {', '.join(names)}" for size, names in by_size.items())
    lines.append(f"Evaluation pictures {sizes}.")
    if "mlp_tag_dropout" in models:
        lines.append(
            f"{MODEL_TITLES['mlp_tag_dropout']}: the MLP run with `--caption_tag_dropout_rate "
            f"{config['mlp_tag_dropout_rate']:g}` (each tag of a training caption left out with that "
            "probability, drawn anew every step), otherwise the MLP's."
        )
    if "mlp_center_crop" in models:
        others = (
            "every other run trains them in aspect-ratio buckets (`--enable_bucket`)"
            if config["enable_bucket"]
            else "this demo ran with `--no-enable_bucket`, so every run did the same"
        )
        lines.append(
            f"{MODEL_TITLES['mlp_center_crop']}: the MLP run without `--enable_bucket`, so its 2:1 and 1:2 "
            f"training pictures are cut to their centre squares; {others}. Its held-out domain loss is "
            "measured as it trains, on centre crops: compare it with the others on the 2:1 and 1:2 loss."
        )
    return " ".join(lines)


def _attributes(scores: dict) -> str:
    return " / ".join(_pct(scores[name]) for name in world.ATTRIBUTE_NAMES)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
