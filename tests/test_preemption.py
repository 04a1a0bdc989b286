"""Preemption: a SIGTERM or SIGINT ends a run after the step it arrives in, with a checkpoint, one line
on how to resume and exit status 143 / 130; resuming it ends bit for bit as an uninterrupted run.

Every kind in the registry is stopped in-process through its script's `main` (a real signal to this
process, sent at a known step, so nothing races), in bf16 with the preservation penalty, and resumed bit
for bit. One kind is stopped as a subprocess, one killed (SIGKILL: no checkpoint of its own, the periodic
one resumes), and one stopped as a two-process torchrun run, all by signals from outside after their first
checkpoint. A fresh process costs seconds of imports, so the process-level tests take one kind each: what
they add (a signal from outside, a kill) does not depend on the kind.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from accelerate.state import AcceleratorState
from test_kind_contract import TORCHRUN
from training_helpers import REPO, adapter_tensors, common_args, kind_script, train_in_process

from altadapter.adapter_io import read_adapter_file
from altadapter.adapters import kind_names
from altadapter.training import loop
from altadapter.training.checkpoints import checkpoint_problem, read_checkpoint_info
from altadapter.training.preemption import StopSignals

# One thread, pinned: a resumed run is exact only with the count it was trained with, whatever the
# machine's load. The in-process stops run in bf16 with the preservation penalty (the most state a resume
# must restore); the subprocess ones, many steps long, in fp32 (bf16 is 3x slower on a CPU).
FLAGS = ["--random_flip", "--num_threads", "1"]
BF16_FLAGS = [*FLAGS, "--mixed_precision", "bf16", "--preserve_weight", "0.5"]
RESUME = "resume with the same command and --resume_from_checkpoint latest"


def run_script_main(kind: str, argv: list[str]) -> int:
    """The kind's training script's `main` in this process; returns the status it exits with."""
    script, flags = kind_script(kind)
    module = importlib.import_module(script.stem)
    try:
        with pytest.raises(SystemExit) as exited:
            module.main(module.parse_args([*flags, *argv]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return exited.value.code


def signal_during_step(monkeypatch, step: int, number: int) -> None:
    """Send this process `number` as optimizer step `step` (1-based) begins, as a scheduler might."""
    real = loop.training_step

    def step_with_signal(run, micro_step: int):
        if micro_step == step - 1:
            os.kill(os.getpid(), number)
        return real(run, micro_step)

    monkeypatch.setattr(loop, "training_step", step_with_signal)


def stop_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("stopped by")]


@pytest.mark.parametrize("kind", kind_names())
def test_sigterm_saves_the_step_it_arrives_in_and_the_resume_is_bit_for_bit(
    kind, roomy_model_dir, colour_dataset, tmp_path, monkeypatch, capfd
):
    argv, whole = (
        common_args(colour_dataset, roomy_model_dir, out, "run", *BF16_FLAGS, "--max_train_steps", "4")
        for out in (tmp_path, tmp_path / "whole")
    )
    reference = train_in_process(kind, whole)
    capfd.readouterr()

    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    assert run_script_main(kind, argv) == 143
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    err = capfd.readouterr().err
    assert stop_lines(err) == [
        f"stopped by SIGTERM at step 3: checkpoint saved to {run_dir / 'checkpoint-3'}; {RESUME}"
    ]
    assert "SIGTERM: stopping after this step with a checkpoint" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2",
        "checkpoint-3",
    ]
    assert checkpoint_problem(run_dir / "checkpoint-3") is None
    assert read_checkpoint_info(run_dir / "checkpoint-3")["step"] == 3
    assert not (run_dir / "run.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process's handlers are back

    resumed = train_in_process(kind, [*argv, "--resume_from_checkpoint", "latest"])
    tensors = adapter_tensors(resumed)
    for name, tensor in adapter_tensors(reference).items():
        assert torch.equal(tensors[name], tensor), name


def test_sigint_at_a_periodic_checkpoint_exits_130_without_saving_it_twice(
    colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    # Known before: a test run in the background (`make test &`) starts with SIGINT ignored.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sigint_at_a_periodic_checkpoint(colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, before)


def sigint_at_a_periodic_checkpoint(colour_dataset, tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    saved = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda *a, **k: saved.append(a[2]) or real_save(*a, **k))
    signal_during_step(monkeypatch, 2, signal.SIGINT)
    argv = common_args(
        colour_dataset, tiny_model_dir, tmp_path, "run", "--num_layers", "1", "--num_threads", "1"
    )
    assert run_script_main("mlp", argv) == 130
    assert saved == [2]
    assert stop_lines(capsys.readouterr().err) == [
        f"stopped by SIGINT at step 2: checkpoint saved to {tmp_path / 'run' / 'checkpoint-2'}; {RESUME}"
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_in_the_last_step_lets_the_run_finish(colour_dataset, tiny_model_dir, tmp_path, monkeypatch):
    signal_during_step(monkeypatch, 4, signal.SIGTERM)
    argv = common_args(colour_dataset, tiny_model_dir, tmp_path, "run", "--num_layers", "1")
    assert train_in_process("mlp", argv).is_file()


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    code = (
        "import os, signal\n"
        "from altadapter.training.preemption import StopSignals\n"
        "with StopSignals() as signals:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('received', signals.received, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('still running', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.splitlines() == [f"received {int(signal.SIGTERM)}"]
    assert result.returncode == -signal.SIGTERM  # ended by the signal itself, as without any handler
    assert "a second signal stops at once" in result.stderr


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll until `condition()` holds; fail if the process ends first or it takes past `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_sigterm_to_a_training_subprocess_after_its_first_checkpoint(
    roomy_model_dir, colour_dataset, tmp_path
):
    kind, steps = (
        "lora",
        "12",
    )  # LoRA: the kind whose resume once differed; 10 steps after the first checkpoint
    argv = common_args(colour_dataset, roomy_model_dir, tmp_path, "run", *FLAGS, "--max_train_steps", steps)
    script, kind_flags = kind_script(kind)
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe nobody reads while the run goes on
        process = subprocess.Popen([sys.executable, str(script), *kind_flags, *argv], cwd=REPO, stderr=stderr)
    run_dir = tmp_path / "run"
    try:
        wait_for((run_dir / "checkpoint-2").is_dir, process, "first checkpoint")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=240)
    finally:
        process.kill()
    err = log.read_text()
    assert process.returncode == 143, err[-3000:]
    [line] = stop_lines(err)
    step = int(line.split(" at step ")[1].split(":")[0])
    assert (
        line
        == f"stopped by SIGTERM at step {step}: checkpoint saved to {run_dir / f'checkpoint-{step}'}; {RESUME}"
    )
    assert step < int(steps) and not (run_dir / "run.safetensors").exists(), "stopped too late to test"
    assert checkpoint_problem(run_dir / f"checkpoint-{step}") is None

    reference = train_in_process(
        kind,
        common_args(
            colour_dataset, roomy_model_dir, tmp_path / "whole", "run", *FLAGS, "--max_train_steps", steps
        ),
    )
    resumed = adapter_tensors(train_in_process(kind, [*argv, "--resume_from_checkpoint", "latest"]))
    for name, tensor in adapter_tensors(reference).items():
        assert torch.equal(resumed[name], tensor), name


def test_a_killed_bf16_run_resumes_from_its_periodic_checkpoint_bit_for_bit(
    roomy_model_dir, colour_dataset, tmp_path
):
    # Killed once checkpoint-2 is there, four steps before the end: room for a slow poll on a busy machine.
    kind, steps = "vocab", "6"
    argv = common_args(
        colour_dataset, roomy_model_dir, tmp_path, "run", *BF16_FLAGS, "--max_train_steps", steps
    )
    script, kind_flags = kind_script(kind)
    process = subprocess.Popen(
        [sys.executable, str(script), *kind_flags, *argv], cwd=REPO, stderr=subprocess.DEVNULL
    )
    run_dir = tmp_path / "run"
    try:
        wait_for((run_dir / "checkpoint-2").is_dir, process, "first checkpoint")
    finally:
        process.kill()
        process.wait()
    assert not (run_dir / "run.safetensors").exists(), "killed too late to test resuming"

    reference = train_in_process(
        kind,
        common_args(
            colour_dataset,
            roomy_model_dir,
            tmp_path / "whole",
            "run",
            *BF16_FLAGS,
            "--max_train_steps",
            steps,
        ),
    )
    resumed = read_adapter_file(train_in_process(kind, [*argv, "--resume_from_checkpoint", "latest"]))
    assert resumed[1].step == int(steps)
    for name, tensor in adapter_tensors(reference).items():
        assert torch.equal(resumed[0][name], tensor), name


def test_two_processes_signalled_stop_at_the_same_step(roomy_model_dir, aspect_dataset, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    script, kind_flags = kind_script("mlp")
    argv = common_args(
        aspect_dataset, roomy_model_dir, tmp_path, "run", "--enable_bucket", "--batch_size", "2"
    )
    argv += ["--max_train_steps", "12"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        launcher = subprocess.Popen(
            [*TORCHRUN, str(script), *kind_flags, *argv], cwd=REPO, env=env, stderr=stderr
        )
    run_dir = tmp_path / "run"
    try:
        workers = []

        def started() -> bool:
            workers[:] = psutil.Process(launcher.pid).children()
            return len(workers) == 2 and (run_dir / "checkpoint-2").is_dir()

        wait_for(started, launcher, "first checkpoint")
        for worker in workers:  # as a cluster's scheduler signals every task of a job
            worker.send_signal(signal.SIGTERM)
        launcher.wait(timeout=240)
    finally:
        launcher.kill()
    err = log.read_text()
    stops = [line.split("INFO ")[-1] for line in err.splitlines() if "with adapter" in line]
    assert sorted(line.split(" on process ")[1] for line in stops) == ["0", "1"], err[-3000:]
    assert len({line.split(" on process")[0] for line in stops}) == 1  # the same step, the same adapter
    [line] = stop_lines(err)  # one line, from the main process
    step = int(line.split(" at step ")[1].split(":")[0])
    assert step < 12 and checkpoint_problem(run_dir / f"checkpoint-{step}") is None


def test_a_signal_ignored_before_the_run_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # caught
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
