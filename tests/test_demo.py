"""The toy demo, run as a user runs it (`python demo/run_demo.py --smoke`) on a tiny base: every artefact."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from altadapter.adapter_io import read_adapter_file
from altadapter.model import load_base
from altadapter.rendering.sampler import RenderSettings
from altadapter.testing.tiny_models import ModelSize, build_model_dir
from toyworld import captions, evaluation
from toyworld.commands import Command, DemoError, run_commands
from toyworld.demo import set_sizes
from toyworld.demo_config import ADAPTER_MODELS, MODELS, PROMPT_SETS, SMOKE, DemoConfig, DemoPaths
from toyworld.results import format_results
from toyworld.workflow import GRID_PAIRS, TRAIN_ORDER, evaluated_models, model_commands

ROOT = Path(__file__).resolve().parents[1]
RUN_DEMO = ROOT / "demo" / "run_demo.py"


@pytest.fixture(scope="module")
def toy_sized_base(tmp_path_factory) -> Path:
    """A random tiny base that knows the toy world's words, with room for 4 prompt vectors + a long caption."""
    size = ModelSize(model_max_length=64, sample_size=32)
    return build_model_dir(tmp_path_factory.mktemp("models") / "toy", size, words=captions.TOY_VOCABULARY)


@pytest.fixture(scope="module")
def smoke_run(toy_sized_base, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    work, images = root / "out", root / "images"
    command = [sys.executable, str(RUN_DEMO), "--smoke", "--model_path", str(toy_sized_base)]
    command += ["--work_dir", str(work), "--images_dir", str(images), "--mlp_tag_dropout_rate", "0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    return done, work, images


def test_smoke_demo_writes_every_artefact(smoke_run):
    done, work, images = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    # The write-up's grids and table, from the real rendering scripts.
    steps, count = SMOKE["grid_steps"], SMOKE["grid_images"]
    for kind in (kind for pair in GRID_PAIRS for kind in pair):
        for index in range(SMOKE["grid_prompts"]):
            stem = f"grid_{index}_with_samples_{count}_with_steps_{steps}"
            assert (images / kind / f"{stem}.png").is_file()
            assert (images / kind / f"{stem}_original.png").is_file()
        assert (images / kind / "render.json").is_file()
    table = (images / "prompt" / "report.md").read_text(encoding="utf-8")
    assert "MLP, Prompt and the original side by side" in table
    assert "Vocab, LoRA and the original side by side" in (images / "lora" / "report.md").read_text("utf-8")
    paths = DemoPaths(work, images)
    for name in MODELS:
        if name != "original":
            assert paths.adapter(name).is_file()
    for set_name in PROMPT_SETS:
        assert (images / "samples" / f"{set_name}.png").is_file()
    assert (work / "logs" / "train_prompt_preserve.log").is_file()


def test_smoke_demo_trains_non_square_pictures_in_buckets_and_one_mlp_with_tag_dropout(smoke_run):
    done, work, _ = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    paths = DemoPaths(work, work)
    sizes = {Image.open(path).size for path in (paths.data).rglob("*.png")}
    assert (32, 32) in sizes and sizes & {(64, 32), (32, 64)}
    # The loss that compares buckets with centre crops reads whole non-square pictures only.
    assert {Image.open(path).size for path in paths.nonsquare_heldout.glob("*.png")} <= {(64, 32), (32, 64)}
    for name in ADAPTER_MODELS:
        flags = json.loads(read_adapter_file(paths.adapter(name))[1].extra["training"])
        assert flags["enable_bucket"] is (name != "mlp_center_crop"), name
        assert flags["caption_tag_dropout_rate"] == (0.3 if name == "mlp_tag_dropout" else 0.0), name
    assert "aspect-ratio buckets (width x height: training pictures)" in (
        work / "logs" / "train_mlp.log"
    ).read_text(encoding="utf-8")


def test_the_evaluation_renders_and_scores_at_a_non_square_size(toy_sized_base):
    base = load_base(toy_sized_base)
    prompts = captions.domain_prompts(2, seed=0, num_tags=captions.SHORT_NUM_TAGS)
    settings = RenderSettings(num_images=1, num_inference_steps=2, scheduler="ddim", width=48, height=32)
    pictures = evaluation.render_models(base, {"original": None}, prompts, settings)
    assert [image.size for row in pictures["original"] for image in row] == [(48, 32), (48, 32)]
    scores = evaluation.score_pictures(pictures["original"], prompts)
    assert scores["n"] == 2 and 0 <= scores["all"] <= 1


def test_smoke_demo_reports_finite_numbers_for_every_model_and_prompt_set(smoke_run):
    done, work, _ = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "results.json").read_text(encoding="utf-8"))
    assert list(results["models"]) == list(MODELS)
    for name, model in results["models"].items():
        for where in ("domain", "base_world", "domain_nonsquare"):
            assert math.isfinite(model["heldout_loss"][where]) and model["heldout_loss"][where] > 0, name
        assert set(model["accuracy"]) == set(PROMPT_SETS)
        for scores in model["accuracy"].values():
            n = scores["n"]
            assert n == SMOKE["eval_prompts"]
            # Each is a count of pictures over n, and all three right is never more than any one right.
            for attribute in ("fg", "bg", "shape", "all"):
                assert scores[attribute] * n == pytest.approx(round(scores[attribute] * n)), (name, scores)
            assert scores["all"] <= min(scores["fg"], scores["bg"], scores["shape"]), (name, scores)
    assert results["chance"]["all"] == pytest.approx(1 / 90)
    assert results["prompt_sets"]["domain_long_wide"] == {
        "file": "domain_prompts_long.txt",
        "width": 40,
        "height": 24,
    }
    assert set(results["timings_s"]) == {"data", "train", "grids", "evaluate", "total"}
    assert all(math.isfinite(seconds) for seconds in results["timings_s"].values())
    # The printed table is results.md, and it names the command that reproduces it.
    report = (work / "results.md").read_text(encoding="utf-8")
    assert "| Prompt + preserve |" in report and "--smoke" in report
    assert "| MLP, tag dropout |" in report and "| MLP, centre crop |" in report
    assert "held-out loss, domain, 2:1 and 1:2 |" in report
    assert "accuracy, domain, long (12-16 tags), 40x24 |" in report
    assert "`--caption_tag_dropout_rate 0.3`" in report and "Only some runs" not in report
    # What each adapter costs, read from its file: parameters, bytes, a step's time as a ratio to the MLP's.
    for name, model in results["models"].items():
        if name != "original":
            assert model["parameters"] > 0 and model["file_bytes"] > 0, name
            assert 0 < model["seconds_per_step"] < 60, name
    assert "| MLP | " in report and "1.00x |" in report
    assert "| MLP |" in done.stdout
    # Every script the README shows was run, and printed as it ran.
    for script in ("make_toy_domain.py", "meta_file_converter.py", "prompts_generator.py"):
        assert script in done.stdout
    scripts = ("text_encoder_util_mlp_transfer.py", "text_encoder_util.py", "text_encoder_gen_show.py")
    for script in (
        *scripts,
        "train_adapter.py --kind vocab",
        "train_adapter.py --kind lora",
        "render_adapter.py",
    ):
        assert script in done.stdout


def test_a_models_run_reports_only_its_rows(smoke_run):
    done, work, _ = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "results.json").read_text(encoding="utf-8"))
    kept = ("original", "mlp_tag_dropout")
    results["models"] = {name: model for name, model in results["models"].items() if name in kept}
    results["config"]["models"] = ["mlp_tag_dropout"]
    results["artefacts"].update(grids=[], tables=[])
    report = format_results(results)
    tables = report.split("## Time")[0]  # the timings table lists commands, not models
    rows = [line.split(" | ")[0] for line in tables.splitlines() if line.startswith("| ")]
    assert set(rows) == {"| model", "| ---", "| original", "| MLP, tag dropout", "| chance"}
    assert "Only some runs (`--models`): MLP, tag dropout, and the original" in report
    assert "Grids of each kind" not in report


def test_models_flag_restricts_the_runs_grids_and_evaluated_models(tmp_path):
    script = runpy.run_path(str(RUN_DEMO), run_name="script_under_test")
    paths = DemoPaths(tmp_path, tmp_path / "images")

    def planned(*argv: str) -> tuple[list[str], list[str]]:
        config = script["config_from_args"](script["parse_args"](list(argv)))
        return [c.name for c in model_commands(config, paths, resolution=32)], evaluated_models(config)

    assert planned("--models", "mlp_tag_dropout") == (
        ["train_mlp_tag_dropout"],
        ["original", "mlp_tag_dropout"],
    )
    # In queue order whatever the command line's; a grid pair only with both its runs.
    assert planned("--models", "mlp", "lora", "prompt", "mlp") == (
        ["train_prompt", "train_lora", "train_mlp", "render_mlp", "render_prompt"],
        ["original", "mlp", "prompt", "lora"],
    )
    names, models = planned()
    assert models == list(MODELS) and sorted(TRAIN_ORDER) == sorted(ADAPTER_MODELS)
    assert names == [
        *(f"train_{name}" for name in TRAIN_ORDER),
        *(f"render_{k}" for pair in GRID_PAIRS for k in pair),
    ]
    with pytest.raises(SystemExit):
        script["parse_args"](["--models", "original"])


def test_the_mlp_variants_differ_from_the_mlp_run_in_one_flag_each(tmp_path):
    config = DemoConfig(mlp_tag_dropout_rate=0.15)
    argv = {c.name: c.argv for c in model_commands(config, DemoPaths(tmp_path, tmp_path), resolution=32)}
    mlp = argv["train_mlp"]
    assert "--enable_bucket" in mlp and "--caption_tag_dropout_rate" not in mlp
    assert [a for a in argv["train_mlp_center_crop"] if a not in mlp] == ["toy-mlp-center-crop"]
    assert [a for a in mlp if a not in argv["train_mlp_center_crop"]] == ["toy-mlp", "--enable_bucket"]
    assert [a for a in argv["train_mlp_tag_dropout"] if a not in mlp] == [
        "toy-mlp-tag-dropout",
        "--caption_tag_dropout_rate",
        "0.15",
    ]
    # The wide set renders the long prompts at its own size; the others at the base's, or --eval_width's.
    assert set_sizes(config, 32) == {
        "domain_short": (32, 32),
        "domain_long": (32, 32),
        "base_world": (32, 32),
        "domain_long_wide": (40, 24),
    }
    assert set_sizes(DemoConfig(eval_width=48, eval_height=32), 32)["domain_short"] == (48, 32)


def test_missing_base_says_how_to_build_it(tmp_path):
    script = runpy.run_path(str(RUN_DEMO), run_name="script_under_test")
    args = script["parse_args"](["--model_path", str(tmp_path / "nothing"), "--work_dir", str(tmp_path)])
    with pytest.raises(
        SystemExit, match=r"no toy base model at .*nothing: build it with `python demo/train_toy_base.py"
    ):
        script["main"](args)


def test_flags_left_unset_take_the_smoke_or_full_sizes():
    script = runpy.run_path(str(RUN_DEMO), run_name="script_under_test")
    config = script["config_from_args"](script["parse_args"](["--smoke", "--max_train_steps", "3"]))
    assert config.max_train_steps == 3 and config.eval_prompts == SMOKE["eval_prompts"]
    full = script["config_from_args"](script["parse_args"]([]))
    assert full == DemoConfig()
    with pytest.raises(ValueError, match="eval_steps must be at least 1, got 0"):
        DemoConfig(eval_steps=0)
    with pytest.raises(ValueError, match="preserve_weight must be a positive number"):
        DemoConfig(preserve_weight=0.0)
    with pytest.raises(ValueError, match=r"nonsquare_share must be in \[0, 1\), got 1.5"):
        DemoConfig(nonsquare_share=1.5)
    with pytest.raises(ValueError, match="eval_width and eval_height: give both or neither"):
        DemoConfig(eval_width=48)
    with pytest.raises(ValueError, match=r"mlp_tag_dropout_rate must be in \(0, 1\), got 0.0"):
        DemoConfig(mlp_tag_dropout_rate=0.0)
    with pytest.raises(ValueError, match="models must be some of mlp, prompt.*got \\['original'\\]"):
        DemoConfig(models=("original",))
    with pytest.raises(ValueError, match="wide_height 20: must be a positive multiple of 8"):
        DemoConfig(wide_height=20)
    squares = script["config_from_args"](
        script["parse_args"](["--no-enable_bucket", "--nonsquare_share", "0"])
    )
    assert not squares.enable_bucket and squares.nonsquare_share == 0


def test_commands_run_after_what_they_need_and_a_failure_shows_its_log(tmp_path):
    marker = tmp_path / "first.txt"
    first = Command("first", "data", ["-c", f"open({str(marker)!r}, 'w').write('x')"])
    second = Command(
        "second", "data", ["-c", f"assert open({str(marker)!r}).read() == 'x'"], after=("first",)
    )
    timings = run_commands([second, first], jobs=2, log_dir=tmp_path / "logs", clock=0.0)
    assert set(timings) == {"first", "second"}
    assert timings["first"]["end_s"] <= timings["second"]["start_s"]
    failing = Command("failing", "train", ["-c", "print('the reason'); raise SystemExit(3)"])
    with pytest.raises(DemoError, match=r"(?s)failed \(exit 3\).*failing\.log.*the reason"):
        run_commands([failing], jobs=1, log_dir=tmp_path / "logs", clock=0.0)
