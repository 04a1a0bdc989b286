"""The exceptions every script shows as one line instead of a traceback, each with its exit status."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user fixes from the message alone: a flag, a file, a folder, a model path (exit 2)."""


class OutputError(Exception):
    """A file that could not be written: a full disk, a read-only folder (exit 1: the command was right).

    `shown` is False on the processes of a multi-process run that stop only because the main process
    could not write, so that the line appears once.
    """

    def __init__(self, message: str, *, shown: bool = True) -> None:
        super().__init__(message)
        self.shown = shown


class Stopped(Exception):
    """A run stopped by a signal after saving a checkpoint; the message says how to resume it.

    The run has printed the message already, from the main process, before its processes parted (a
    launcher signals the others once one has exited). `status` is what a shell reports for a process
    the signal ended, 128 + its number (143 for SIGTERM, 130 for SIGINT), so a scheduler or a script
    sees the status it would see without this handling.
    """

    def __init__(self, message: str, *, signal_number: int) -> None:
        super().__init__(message)
        self.status = 128 + signal_number
