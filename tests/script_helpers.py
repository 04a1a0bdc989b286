"""Running a top-level script from a test as `python SCRIPT ARGS` runs it, but in the test's own process.

A fresh interpreter costs seconds of imports (torch, diffusers, transformers) per run; tests that check what a
script does, not how a new process starts, run its `__main__` block here instead. What only a fresh process
shows (the interpreter's own traceback, console logging, a kill, torchrun) keeps a real subprocess.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from accelerate.state import AcceleratorState

REPO = Path(__file__).resolve().parents[1]


def run_as_main(script: str | Path, *argv: str | Path) -> int:
    """Run `script`'s `__main__` block with `argv` as its command line; returns its exit status.

    An exception the script lets out propagates (a process would print its traceback and exit 1).
    """
    saved = sys.argv
    sys.argv = [str(REPO / script), *map(str, argv)]
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exit_info:
        code = exit_info.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
        AcceleratorState._reset_state(reset_partial_state=True)  # a training script's, as a process exit
    return 0
