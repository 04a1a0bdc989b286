"""What the processes of a multi-process run agree on, so that none waits for a peer that has stopped.

Each helper is a collective: every process calls it at the same point, and it also acts as a barrier.
In a single-process run the gather is the tensor itself, so these cost nothing there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator

from altadapter.errors import OutputError


def max_over_processes(accelerator: Accelerator, value: int) -> int:
    """The largest `value` any process passed."""
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max().item())


def write_on_main_process(accelerator: Accelerator, write: Callable[[], None]) -> None:
    """Run `write` on the main process; when it fails with an OutputError, every process raises one.

    Without this, the other processes would wait at the next barrier for a main process that has
    already left with its error; they raise theirs unshown, so the run prints the failure once.
    """
    failure: OutputError | None = None
    if accelerator.is_main_process:
        try:
            write()
        except OutputError as error:
            failure = error
    if max_over_processes(accelerator, failure is not None):
        if failure is not None:
            raise failure
        raise OutputError(
            f"process {accelerator.process_index} stops: the main process could not write", shown=False
        )
