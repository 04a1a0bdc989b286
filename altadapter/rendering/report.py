"""What a render run leaves beside its images: `render.json` (machine-readable) and `report.md`.

report.md has the write-up's table (index | prompt | tuned | original) with links relative to its folder,
optional CLIP scores, the run's settings, and for a prompt or vocab adapter each learned vector's nearest
tokens. Given another run's folder (`--compare_with`), it adds a table of both: for the write-up's two
kinds, its full table MLP | Prompt | original.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import torch
from torch import nn

from altadapter.adapter_io import AdapterMetadata
from altadapter.adapters import get_kind, kind_names, kind_of
from altadapter.fileio import atomic_write
from altadapter.model import AltDiffusionBase
from altadapter.rendering.sampler import PromptImages, RenderSettings, prompt_files, scale_label

RECORD_NAME = "render.json"
REPORT_NAME = "report.md"
FORMAT = "altadapter-render/1"
# What decides the original's pixels: two runs that agree on all of these rendered the same originals.
ORIGINAL_KEYS = (
    "num_images",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "seed",
    "height",
    "width",
    "scheduler",
    "device",
    "dtype",
)


@torch.no_grad()
def nearest_tokens(base: AltDiffusionBase, adapter: nn.Module, top_k: int) -> list[list[tuple[str, float]]]:
    """Each learned input vector's `top_k` nearest vocabulary tokens by cosine similarity, nearest first.

    Only rows the tokenizer has a token for are searched: checkpoints pad their embedding matrices past
    the vocabulary, and a padding row is no word to show.
    """
    words = base.text_encoder.get_input_embeddings().weight[: len(base.tokenizer)]  # (V, H)
    learned = kind_of(adapter).learned_vectors(adapter)
    vectors = torch.nn.functional.normalize(learned.float().to(words.device), dim=-1)  # (P, H)
    # Slices of the vocabulary: m9's 250,002 x 1024 embeddings would take 1 GB more as fp32 at once.
    similarity = torch.cat(
        [vectors @ torch.nn.functional.normalize(part.float(), dim=-1).T for part in words.split(32768)],
        dim=1,
    )  # (P, V)
    values, ids = similarity.topk(min(top_k, similarity.shape[1]), dim=1)
    return [
        list(zip(base.tokenizer.convert_ids_to_tokens(row_ids), row_values, strict=True))
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]


def build_record(
    results: Sequence[PromptImages],
    settings: RenderSettings,
    *,
    base: AltDiffusionBase,
    adapter_path: str | Path,
    metadata: AdapterMetadata,
    runtime: dict,
    clip: Sequence[dict] | None = None,
    nearest: list[list[tuple[str, float]]] | None = None,
) -> dict:
    """The run as `render.json` stores it: settings, adapter, and per prompt its seeds, files and scores."""
    prompts = []
    for position, result in enumerate(results):
        files = prompt_files(result.index, settings)
        scores = clip[position] if clip else {"tuned": {}, "original": None}
        prompts.append(
            {
                "index": result.index,
                "prompt": result.prompt,
                "seeds": result.seeds,
                "tuned": [
                    {"scale": scale, "file": files.tuned[scale], "clip": scores["tuned"].get(scale)}
                    for scale in result.tuned
                ],
                "original": {"file": files.original, "clip": scores["original"]},
                "compare": files.compare,
            }
        )
    return {
        "format": FORMAT,
        "kind": metadata.kind,
        "model": {"path": str(base.info.name), "fingerprint": base.info.fingerprint},
        "adapter": {
            "path": str(adapter_path),
            "config": metadata.config,
            "step": metadata.step,
            "extra": metadata.extra,
        },
        # Lists, not tuples, so the record in memory reads as the one loaded back from render.json.
        "settings": {
            **asdict(settings),
            "scales": list(settings.scales),
            "main_scale": settings.main_scale,
            **runtime,
        },
        "prompts": prompts,
        "nearest_tokens": nearest,
        "vector_labels": get_kind(metadata.kind).vector_labels(metadata.config) if nearest else None,
    }


def write_record(output_dir: str | Path, record: dict) -> Path:
    """Write `render.json` atomically."""
    path = Path(output_dir) / RECORD_NAME
    with atomic_write(path) as handle:
        json.dump(record, handle, ensure_ascii=False, indent=2)
    return path


def read_record(output_dir: str | Path) -> dict:
    """Another run's `render.json`, for --compare_with."""
    path = Path(output_dir) / RECORD_NAME
    if not path.is_file():
        raise ValueError(
            f"--compare_with {output_dir}: no {RECORD_NAME} there; render the other adapter into it first "
            f"({', '.join(sorted({get_kind(name).render_command for name in kind_names()}))} "
            f"--output_dir {output_dir})"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error}); render that folder again") from error
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a render record of this tool (format {record.get('format')!r})")
    return record


def check_comparable(kind: str, prompts: Sequence[str], other: dict, other_dir: str | Path) -> None:
    """Refuse a --compare_with folder of the same adapter kind or rendered from other prompts."""
    if other["kind"] == kind:
        counterpart = get_kind(kind).counterpart
        wanted = (
            f"that {get_kind(counterpart).render_command} rendered"
            if counterpart
            else "of another adapter kind"
        )
        raise ValueError(
            f"--compare_with {other_dir} holds {kind} adapter images too; give the folder {wanted}"
        )
    theirs = [entry["prompt"] for entry in other["prompts"]]
    if theirs != list(prompts):
        raise ValueError(
            f"--compare_with {other_dir} was rendered from other prompts ({len(theirs)} vs {len(prompts)}); "
            "render both adapters from the same prompts file"
        )


def format_report(record: dict, other: dict | None = None, other_link: str = "") -> str:
    """report.md: this run's table, both runs' table if `other` is given, settings, nearest tokens.

    `other_link` is the other run's folder relative to this report's folder.
    """
    title = get_kind(record["kind"]).title
    lines = [f"# {title} adapter: tuned and original, from the same noise", ""]
    lines += _run_table(record)
    if other is not None:
        first, second = (get_kind(kind).title for kind in _in_kind_order(record, other))
        lines += ["", f"## {first}, {second} and the original side by side", ""]
        lines += _full_table(record, other, other_link)
    lines += ["", "## Settings", "", *_settings(record)]
    if other is not None:
        lines += ["", f"## Settings of the {get_kind(other['kind']).title} run (`{other_link}`)", ""]
        lines += _settings(other)
    if record.get("nearest_tokens"):
        vectors = get_kind(record["kind"]).vector_noun
        lines += ["", f"## Nearest vocabulary tokens of each {vectors} (cosine)", ""]
        lines += ["| vector | nearest tokens |", "|---:|:---|"]
        labels = record.get("vector_labels") or [str(i) for i in range(len(record["nearest_tokens"]))]
        for label, tokens in zip(labels, record["nearest_tokens"], strict=True):
            cells = ", ".join(f"{_code(token)} {cosine:.3f}" for token, cosine in tokens)
            lines.append(f"| {_escape(label)} | {cells} |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | Path, record: dict, other_dir: str | Path | None = None) -> Path:
    """Write report.md into `output_dir`, with the full comparison table when `other_dir` is given."""
    output_dir = Path(output_dir)
    other = read_record(other_dir) if other_dir is not None else None
    other_link = (
        Path(os.path.relpath(Path(other_dir), output_dir)).as_posix() if other_dir is not None else ""
    )
    path = output_dir / REPORT_NAME
    with atomic_write(path) as handle:
        handle.write(format_report(record, other, other_link))
    return path


def _run_table(record: dict) -> list[str]:
    first = record["prompts"][0]
    headers = ["index", "prompt"]
    headers += [scale_label(entry["scale"], record["settings"]["scales"]) for entry in first["tuned"]]
    headers += ["original", "side by side"]
    scored = first["original"]["clip"] is not None
    if scored:
        headers += [
            f"CLIP {scale_label(entry['scale'], record['settings']['scales'])}" for entry in first["tuned"]
        ] + ["CLIP original"]
    lines = [markdown_row(headers), markdown_row([":---:"] * len(headers))]
    for entry in record["prompts"]:
        cells = [str(entry["index"]), _escape(entry["prompt"])]
        cells += [_image(tuned["file"]) for tuned in entry["tuned"]]
        cells += [_image(entry["original"]["file"]), f"[compare]({_link(entry['compare'])})"]
        if scored:
            cells += [f"{tuned['clip']:.2f}" for tuned in entry["tuned"]] + [
                f"{entry['original']['clip']:.2f}"
            ]
        lines.append(markdown_row(cells))
    return lines


def _in_kind_order(record: dict, other: dict) -> list[str]:
    """The two runs' kinds in registration order (MLP before Prompt, as the write-up's table)."""
    return sorted({record["kind"], other["kind"]}, key=kind_names().index)


def _full_table(record: dict, other: dict, other_link: str) -> list[str]:
    """index | prompt | MLP | Prompt | original (both originals when the runs' settings differ).

    Any two kinds: the columns are theirs, in registration order.
    """
    runs = {record["kind"]: (record, ""), other["kind"]: (other, other_link)}
    kinds = _in_kind_order(record, other)
    same = record["model"]["fingerprint"] == other["model"]["fingerprint"] and all(
        record["settings"][key] == other["settings"][key] for key in ORIGINAL_KEYS
    )
    titles = [get_kind(kind).title for kind in kinds]
    headers = ["index", "prompt", *titles]
    headers += ["original"] if same else [f"original ({title} run)" for title in titles]
    lines = []
    if not same:
        lines += [
            "The two runs differ in model, sampling settings, device or dtype, so their originals differ too.",
            "",
        ]
    lines += [markdown_row(headers), markdown_row([":---:"] * len(headers))]
    for position, entry in enumerate(record["prompts"]):
        cells = [str(entry["index"]), _escape(entry["prompt"])]
        for kind in kinds:
            run, folder = runs[kind]
            cells.append(_image(_main_file(run["prompts"][position], run), folder))
        originals = kinds if not same else (record["kind"],)
        for kind in originals:
            run, folder = runs[kind]
            cells.append(_image(run["prompts"][position]["original"]["file"], folder))
        lines.append(markdown_row(cells))
    return lines


def _settings(record: dict) -> list[str]:
    settings, adapter = record["settings"], record["adapter"]
    lines = [
        f"- model: `{record['model']['path']}` (weights fingerprint {record['model']['fingerprint']})",
        f"- adapter: `{adapter['path']}`, {record['kind']} {json.dumps(adapter['config'])}, "
        f"trained {adapter['step']} steps",
    ]
    # Training scripts record losses under their own names; show every one they kept.
    lines += [f"- {key}: {value}" for key, value in adapter["extra"].items() if "loss" in key]
    lines += [
        f"- sampler: {settings['scheduler']}, {settings['num_inference_steps']} steps, "
        f"guidance scale {settings['guidance_scale']}, negative prompt {json.dumps(settings['negative_prompt'], ensure_ascii=False)}",
        f"- seed {settings['seed']} (each image's seed is in {RECORD_NAME}), "
        f"{settings['num_images']} images per prompt, {settings['width']}x{settings['height']} pixels",
        f"- adapter scales: {', '.join(f'{scale:g}' for scale in settings['scales'])}",
        f"- device {settings['device']}, dtype {settings['dtype']}",
    ]
    if settings.get("clip_model"):
        lines.append(
            f"- CLIP scores (100 x cosine, mean over a prompt's images) by `{settings['clip_model']}`"
        )
    return lines


def _main_file(entry: dict, record: dict) -> str:
    main = record["settings"]["main_scale"]
    return next(tuned["file"] for tuned in entry["tuned"] if tuned["scale"] == main)


def _image(file: str, folder: str = "") -> str:
    return f"![]({_link(f'{folder}/{file}' if folder else file)})"


def _link(path: str) -> str:
    return quote(path, safe="/.")


def _code(token: str) -> str:
    """A token as inline code in a table cell; a vocabulary has tokens made of backticks and pipes too."""
    token = token.replace("|", "\\|")
    return f"`` {token} ``" if "`" in token else f"`{token}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def markdown_row(cells: Sequence[str]) -> str:
    """One row of a Markdown table."""
    return "| " + " | ".join(cells) + " |"
