"""Run the write-up's scripts as a user would, as subprocesses, side by side on the cores there are."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


class DemoError(RuntimeError):
    """A demo that cannot run or whose step failed; the message says which and what to do."""


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


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
