"""Every top-level script answers a user's mistake with one line naming the flag or file, and exit status 2.

The scripts run as `__main__` in this process (script_helpers); the --verbose test runs a real process, where
the interpreter itself prints the traceback.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from script_helpers import run_as_main

ROOT = Path(__file__).resolve().parents[1]


def run_script(capsys, script: str, *argv: str) -> tuple[int, str]:
    """The script's exit status and what it wrote to stderr."""
    capsys.readouterr()
    return run_as_main(script, *argv), capsys.readouterr().err


@pytest.mark.parametrize(
    ("script", "bad_flags", "named"),
    [
        ("meta_file_converter.py", ["--image_dir", "{missing}", "--output_dir", "{tmp}/out"], "{missing}"),
        (
            "meta_file_converter.py",
            ["--image_dir", "{empty_zip}", "--output_dir", "{tmp}/out"],
            "{empty_zip}",
        ),
        ("prompts_generator.py", ["--data_dir", "{missing}", "--out", "{tmp}/p.txt"], "{missing}"),
        (
            "text_encoder_util_mlp_transfer.py",
            ["--data_dir", "{tmp}", "--resolution", "20"],
            "--resolution 20",
        ),
        ("text_encoder_util.py", ["--train_data_dir", "{missing}"], "--data_dir {missing}"),
        ("text_encoder_gen_show_mlp.py", ["--adapter", "{missing}", "--prompt", "a"], "{missing}"),
        (
            "text_encoder_gen_show.py",
            ["--adapter", "{tmp}/a.safetensors", "--prompts", "{missing}"],
            "{missing}",
        ),
        ("train_adapter.py", ["--kind", "vocab", "--train_data_dir", "{missing}"], "--data_dir {missing}"),
        (
            "train_adapter.py",
            ["--kind", "lora", "--data_dir", "{tmp}", "--resolution", "20"],
            "--resolution 20",
        ),
        ("render_adapter.py", ["--adapter", "{missing}", "--prompt", "a"], "{missing}"),
    ],
)
def test_a_bad_flag_value_is_one_line_and_exit_2(script, bad_flags, named, tmp_path, capsys):
    values = {
        "missing": str(tmp_path / "nowhere"),
        "tmp": str(tmp_path),
        "empty_zip": str(tmp_path / "e.zip"),
    }
    zipfile.ZipFile(values["empty_zip"], "w").close()
    status, stderr = run_script(capsys, script, *(flag.format(**values) for flag in bad_flags))
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert lines[-1].startswith("error: ") and named.format(**values) in lines[-1]
    assert all(not line.startswith(("error", "Traceback")) for line in lines[:-1])


@pytest.mark.parametrize(
    ("bad_flags", "named"),
    [
        (["--kind", "vocab", "--rank", "8"], "--rank is a flag of --kind lora, not of --kind vocab"),
        (["--kind", "dora"], "argument --kind: invalid choice: 'dora'"),
        ([], "the following arguments are required: --kind"),
    ],
)
def test_train_adapter_takes_only_the_flags_of_its_kind(bad_flags, named, tmp_path, capsys):
    status, stderr = run_script(capsys, "train_adapter.py", "--data_dir", str(tmp_path), *bad_flags)
    assert status == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"train_adapter.py: error: {named}")


def test_verbose_keeps_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "prompts_generator.py", "--data_dir", str(tmp_path / "nowhere"), "--verbose"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_an_unreachable_model_path_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "0.png")
    (data / "0.txt").write_text("1girl, solo", encoding="utf-8")
    status, stderr = run_script(
        capsys,
        "text_encoder_util_mlp_transfer.py",
        *("--data_dir", str(data), "--pretrained_model_name_or_path", str(tmp_path / "no_model")),
    )
    assert status == 2 and "Traceback" not in stderr
    assert "no_model" in stderr.strip().splitlines()[-1]
