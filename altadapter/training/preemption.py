"""Stopping a run cleanly on SIGTERM or SIGINT, as schedulers and Ctrl-C ask a job to stop.

While `StopSignals` is installed, the first of these signals only sets `received`: the loop finishes
the optimizer step it is in, saves a checkpoint and ends with exit status 128 + the signal's number.
A second one ends the process at once, as if nothing had caught either: a user who presses Ctrl-C
twice means it. The handlers print one line when the first arrives, so the user (and a test) knows it
was heard; output that needs locks stays with the loop, since a handler runs between any two bytecodes.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context that catches SIGTERM and SIGINT; `received` is the first one's number (0: none yet)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        # Python runs signal handlers in the main thread only; a run started elsewhere keeps the defaults.
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                # An ignored signal stays ignored, as a job started with `nohup ... &` expects of SIGINT.
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            # None: the handler before was not set from Python; the default is what it did.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
            return
        self.received = number
        name = signal.Signals(number).name
        # On a line of its own, after whatever progress bar the terminal shows.
        message = f"\n{name}: stopping after this step with a checkpoint; a second signal stops at once\n"
        os.write(2, message.encode())
