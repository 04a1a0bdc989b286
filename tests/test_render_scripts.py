"""The rendering scripts, run as a user runs them on a tiny model; bad input ends in one line on stderr.

The prompt run is a real process (its console warning is checked); the others run as `__main__` here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_helpers import run_as_main
from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPImageProcessor

from altadapter.adapter_io import save_adapter
from altadapter.adapters.lora import LoRAAdapter, LoRAConfig
from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.prompt import PromptAdapter, PromptConfig
from altadapter.adapters.vocab import VocabAdapter, VocabConfig
from altadapter.model import load_base
from altadapter.rendering import report
from altadapter.rendering.clip_score import ClipScorer
from altadapter.testing.tiny_models import BASIC_WORDS, PRESETS, build_model_dir, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
LONG_PROMPT = ", ".join(["red hair"] * 30)
SCRIPT_FLAGS = ["--num_images", "2", "--num_inference_steps", "2", "--scheduler", "ddim", "--device", "cpu"]


def build_tiny_altclip(path: Path) -> Path:
    """A random AltCLIP (XLM-R text tower, ViT image tower) of a few thousand weights, saved for loading."""
    tokenizer = build_tokenizer(BASIC_WORDS, 77)
    config = AltCLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "project_dim": 16,
            "max_position_embeddings": 80,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    AltCLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    AltCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / name), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def load_script(name: str) -> dict:
    """The script's functions, imported without running it."""
    return runpy.run_path(str(ROOT / name), run_name="script_under_test")


@pytest.fixture(scope="module")
def files(tiny_base, tmp_path_factory) -> dict[str, Path]:
    """Every kind of adapter, one fitted to another base, a prompts file with an over-long prompt, AltCLIP."""
    root = tmp_path_factory.mktemp("render-inputs")
    mlp = MLPAdapter(MLPConfig(dim=tiny_base.info.project_dim))
    torch.nn.init.normal_(mlp.layers[0].weight, std=3.0)
    prompt = PromptAdapter(PromptConfig(dim=tiny_base.info.hidden_size, num_prompts=3))
    other_base = dataclasses.replace(tiny_base.info, name="other-model", fingerprint="0123456789abcdef")
    vocab = VocabAdapter(VocabConfig(dim=tiny_base.info.hidden_size, tags=("red hair", "solo")))
    torch.nn.init.normal_(vocab.embeddings, std=3.0)
    lora = LoRAAdapter(LoRAConfig(dim=tiny_base.info.hidden_size, num_layers=tiny_base.info.num_layers))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=1.0)
    prompts = root / "prompts.txt"
    prompts.write_text(f"1girl, solo, red hair\n\n{LONG_PROMPT}\n", encoding="utf-8")
    return {
        "vocab": save_adapter(root / "vocab.safetensors", vocab, tiny_base.info, step=5),
        "lora": save_adapter(root / "lora.safetensors", lora, tiny_base.info, step=6),
        "mlp": save_adapter(root / "mlp.safetensors", mlp, tiny_base.info, step=3),
        "prompt": save_adapter(
            root / "prompt.safetensors", prompt, tiny_base.info, step=4, extra={"validation_loss": 0.5}
        ),
        "other_base": save_adapter(root / "other.safetensors", prompt, other_base),
        "prompts": prompts,
        "clip": build_tiny_altclip(root / "altclip"),
    }


@pytest.fixture(scope="module")
def prompt_run(tiny_model_dir, files, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    output_dir = tmp_path_factory.mktemp("images") / "prompt"
    done = run_script(
        "text_encoder_gen_show.py",
        *("--model_path", tiny_model_dir, "--adapter", files["prompt"], "--prompts", files["prompts"]),
        *("--output_dir", output_dir, "--clip_model", files["clip"], "--top_k_tokens", "3", *SCRIPT_FLAGS),
    )
    return output_dir, done


def test_prompt_script_writes_grids_scores_tokens_and_warns_about_a_long_prompt(prompt_run, tiny_base, files):
    output_dir, done = prompt_run
    side = tiny_base.unet.config.sample_size * tiny_base.vae_scale_factor  # the model's own picture size
    assert done.returncode == 0, done.stderr
    for index in (0, 1):
        for suffix in ("", "_original"):
            with Image.open(output_dir / f"grid_{index}_with_samples_2_with_steps_2{suffix}.png") as grid:
                assert grid.size == (2 * side, side)
        assert (output_dir / f"compare_{index}_with_samples_2_with_steps_2.png").is_file()
    report = (output_dir / "report.md").read_text(encoding="utf-8")
    assert "| index | prompt | tuned | original | side by side | CLIP tuned | CLIP original |" in report
    assert re.search(r"\| 0 \| 1girl, solo, red hair \|.* \| -?\d+\.\d\d \| -?\d+\.\d\d \|", report)
    assert "## Nearest vocabulary tokens of each prompt vector" in report and "| 2 | `" in report
    record = json.loads((output_dir / "render.json").read_text(encoding="utf-8"))
    assert record["kind"] == "prompt" and record["settings"]["scheduler"] == "ddim"
    # The recorded score is the scorer's on the pictures written: each original grid cut back into its images.
    scorer = ClipScorer(files["clip"])
    for entry in record["prompts"]:
        with Image.open(output_dir / entry["original"]["file"]) as grid:
            images = [grid.crop((j * side, 0, (j + 1) * side, side)).convert("RGB") for j in range(2)]
        expected = sum(scorer.scores(images, entry["prompt"])) / len(images)
        assert entry["original"]["clip"] == pytest.approx(expected, abs=1e-3)
    # The core's truncation warning reaches the console and names the prompt.
    assert re.search(r"WARNING prompt truncated to \d+ of its \d+ tokens: 'red hair, red hair", done.stderr)


def test_mlp_script_adds_the_full_table_from_the_prompt_run(tiny_model_dir, files, prompt_run):
    prompt_dir, _ = prompt_run
    output_dir = prompt_dir.parent / "mlp"
    status = run_as_main(
        "text_encoder_gen_show_mlp.py",
        *("--model_path", tiny_model_dir, "--adapter", files["mlp"], "--prompts", files["prompts"]),
        *("--output_dir", output_dir, "--compare_with", prompt_dir, *SCRIPT_FLAGS),
    )
    assert status == 0
    report = (output_dir / "report.md").read_text(encoding="utf-8")
    assert "| index | prompt | MLP | Prompt | original |" in report
    links = re.findall(r"!\[\]\(([^)]+)\)", report)
    assert "../prompt/grid_1_with_samples_2_with_steps_2.png" in links
    assert all((output_dir / link).is_file() for link in links)
    # Same seeds and settings: both runs rendered the same original images.
    for index in (0, 1):
        name = f"grid_{index}_with_samples_2_with_steps_2_original.png"
        with Image.open(output_dir / name) as ours, Image.open(prompt_dir / name) as theirs:
            assert np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs)).max() <= 1


def test_render_adapter_reads_the_kind_from_the_file_and_tables_two_new_kinds(
    tiny_model_dir, files, tmp_path
):
    flags = ("--model_path", tiny_model_dir, "--prompts", files["prompts"], *SCRIPT_FLAGS)
    vocab_dir, lora_dir = tmp_path / "vocab", tmp_path / "lora"
    status = run_as_main("render_adapter.py", "--adapter", files["vocab"], "--output_dir", vocab_dir, *flags)
    assert status == 0
    report = (vocab_dir / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Vocab adapter: tuned and original, from the same noise")
    assert "## Nearest vocabulary tokens of each tag vector (cosine)" in report and "| red hair | `" in report
    record = json.loads((vocab_dir / "render.json").read_text(encoding="utf-8"))
    assert record["kind"] == "vocab" and record["adapter"]["config"]["tags"] == ["red hair", "solo"]
    status = run_as_main(
        "render_adapter.py",
        "--adapter",
        files["lora"],
        "--output_dir",
        lora_dir,
        "--compare_with",
        vocab_dir,
        *flags,
    )
    assert status == 0
    report = (lora_dir / "report.md").read_text(encoding="utf-8")
    assert (
        "## Vocab, LoRA and the original side by side" in report
        and "| index | prompt | Vocab | LoRA | original |" in report
    )
    assert "Nearest vocabulary tokens" not in report
    for index in (0, 1):
        grid = f"grid_{index}_with_samples_2_with_steps_2.png"
        with (
            Image.open(lora_dir / grid) as tuned,
            Image.open(lora_dir / grid.replace(".png", "_original.png")) as original,
        ):
            assert np.abs(np.asarray(tuned, dtype=np.int16) - np.asarray(original)).max() > 0  # the LoRA acts
        # Same seeds and settings: both runs rendered the same original images.
        name = f"grid_{index}_with_samples_2_with_steps_2_original.png"
        with Image.open(lora_dir / name) as ours, Image.open(vocab_dir / name) as theirs:
            assert np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs)).max() <= 1


@pytest.mark.parametrize(
    ("script", "adapter", "extra", "message"),
    [
        (
            "text_encoder_gen_show.py",
            "lora",
            [],
            "is a lora adapter, not a prompt adapter: render it with render_adapter.py",
        ),
        (
            "text_encoder_gen_show_mlp.py",
            "vocab",
            [],
            "is a vocab adapter, not a mlp adapter: render it with render_adapter.py",
        ),
        ("render_adapter.py", "nope.safetensors", [], "nope.safetensors: no such adapter file"),
        (
            "render_adapter.py",
            "lora",
            ["--top_k_tokens", "3"],
            "--top_k_tokens applies to adapters of learned input vectors; .* is a lora adapter",
        ),
        ("render_adapter.py", "other_base", [], "trained on other-model .*--allow_other_base"),
        ("text_encoder_gen_show.py", "nope.safetensors", [], "nope.safetensors: no such adapter file"),
        (
            "text_encoder_gen_show.py",
            "mlp",
            [],
            "is a mlp adapter, not a prompt adapter: render it with text_encoder_gen_show_mlp.py",
        ),
        ("text_encoder_gen_show_mlp.py", "prompt", [], "render it with text_encoder_gen_show.py"),
        ("text_encoder_gen_show.py", "other_base", [], "trained on other-model .*--allow_other_base"),
        ("text_encoder_gen_show_mlp.py", "mlp", ["--compare_with", "TMP"], "no render.json there"),
        ("text_encoder_gen_show_mlp.py", "mlp", ["--clip_model", "TMP"], "--clip_model .*: no config.json"),
        (
            "text_encoder_gen_show.py",
            "prompt",
            ["--scheduler", "pndm", "--num_inference_steps", "2"],
            r"--num_inference_steps 2 is too few for --scheduler pndm, which needs at least 4 on this model: "
            r"use --num_inference_steps 4 or more, or --scheduler ddim or dpm\+\+2m or euler_a$",
        ),
    ],
)
def test_bad_input_ends_in_one_line_naming_the_problem_and_the_fix(
    tiny_model_dir, files, tmp_path, script, adapter, extra, message, capsys
):
    functions = load_script(script)
    adapter_path = files.get(adapter, tmp_path / adapter)
    argv = ["--model_path", str(tiny_model_dir), "--adapter", str(adapter_path), "--prompt", "a cat"]
    extra = [str(tmp_path) if flag == "TMP" else flag for flag in extra]
    args = functions["parse_args"]([*argv, "--output_dir", str(tmp_path / "out"), *SCRIPT_FLAGS, *extra])
    with pytest.raises(SystemExit) as exit_info:
        functions["main"](args)
    assert exit_info.value.code == 2  # as argparse exits for a bad flag
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and re.search(message, line)
    assert not (tmp_path / "out").exists()


def render_in_process(script: str, output_dir: Path, *argv: str | Path) -> None:
    functions = load_script(script)
    functions["main"](
        functions["parse_args"]([*map(str, argv), "--output_dir", str(output_dir), *SCRIPT_FLAGS])
    )


def test_embedding_rows_without_a_token_are_no_nearest_tokens(tmp_path):
    # As checkpoints pad their embedding matrices: rows past the tokenizer's, here the learned vectors' nearest.
    model = build_model_dir(tmp_path / "padded", dataclasses.replace(PRESETS["tiny"], padded_rows=6))
    base = load_base(model)
    vocab = len(base.tokenizer)
    padding = base.text_encoder.get_input_embeddings().weight[vocab:]
    assert len(padding) == 6
    adapter = PromptAdapter(PromptConfig(dim=base.info.hidden_size, num_prompts=2), padding[:2].clone())
    path = save_adapter(tmp_path / "prompt.safetensors", adapter, base.info)
    output_dir = tmp_path / "out"
    render_in_process(
        "text_encoder_gen_show.py", output_dir, "--model_path", model, "--adapter", path, "--prompt", "a cat"
    )
    nearest = json.loads((output_dir / "render.json").read_text(encoding="utf-8"))["nearest_tokens"]
    assert [len(tokens) for tokens in nearest] == [5, 5]
    assert all(token in base.tokenizer.get_vocab() for tokens in nearest for token, _ in tokens)
    assert "## Nearest vocabulary tokens" in (output_dir / "report.md").read_text(encoding="utf-8")


def test_a_failed_report_says_so_and_leaves_the_images(tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", full_disk)
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        render_in_process(
            "text_encoder_gen_show.py",
            output_dir,
            *("--model_path", tiny_model_dir, "--adapter", files["prompt"], "--prompt", "a cat"),
        )
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: 3 image files are written in {output_dir}, but their report failed: "
        "OSError: [Errno 28] No space left on device"
    )
    names = sorted(path.name for path in output_dir.iterdir())
    assert names == [
        "compare_0_with_samples_2_with_steps_2.png",
        "grid_0_with_samples_2_with_steps_2.png",
        "grid_0_with_samples_2_with_steps_2_original.png",
        "render.json",
    ]


def test_an_empty_prompts_file_says_to_run_prompts_generator(files, tmp_path, capsys):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n \n", encoding="utf-8")
    functions = load_script("text_encoder_gen_show.py")
    args = functions["parse_args"](["--adapter", str(files["prompt"]), "--prompts", str(empty)])
    with pytest.raises(SystemExit):
        functions["main"](args)
    assert re.search(
        re.escape(f"{empty} holds no prompts") + ".*prompts_generator.py", capsys.readouterr().err
    )


def test_both_scripts_share_one_flag_vocabulary(capsys):
    def flags(script: str) -> set[str]:
        with pytest.raises(SystemExit):
            load_script(script)["parse_args"](["--help"])
        return set(re.findall(r"--[a-z_]+", capsys.readouterr().out))

    assert flags("text_encoder_gen_show.py") - flags("text_encoder_gen_show_mlp.py") == {"--top_k_tokens"}
    assert flags("render_adapter.py") == flags("text_encoder_gen_show.py")


def test_clip_score_is_100_times_the_cosine_of_image_and_text(files):
    scorer = ClipScorer(files["clip"])
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    scores = scorer.scores([*images, images[0]], "a red cat")
    assert scores[0] == pytest.approx(scores[2]) and scores[0] != pytest.approx(scores[1])
    # The model's own logits are exp(logit_scale) * cosine: an independent route to the same number.
    inputs = scorer.processor(text=["a red cat"], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = scorer.model(**inputs).logits_per_image[:, 0]
    expected = logits / scorer.model.logit_scale.exp() * 100
    torch.testing.assert_close(torch.tensor(scores[:2]), expected, rtol=1e-4, atol=1e-4)
