"""The one exception type every script shows as a single `error: ...` line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user fixes from the message alone: a flag, a file, a folder, a model path."""
