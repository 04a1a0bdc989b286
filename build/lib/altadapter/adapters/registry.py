"""Kind names to kinds: `register_kind` makes a kind known to every script, file check and report."""

from __future__ import annotations

from torch import nn

from altadapter.adapters.kind import AdapterKind

_KINDS: dict[str, AdapterKind] = {}


def register_kind(kind: AdapterKind) -> AdapterKind:
    """Make `kind` known under its name; registration order is the order of --kind choices and tables."""
    if kind.name in _KINDS:
        raise ValueError(f"an adapter kind named {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def kind_names() -> list[str]:
    """Every registered kind's name, in registration order."""
    return list(_KINDS)


def get_kind(name: str) -> AdapterKind:
    """The kind registered as `name`; a ValueError that lists the known ones otherwise."""
    if name not in _KINDS:
        raise ValueError(f"unknown adapter kind {name!r}; known kinds: {', '.join(_KINDS)}")
    return _KINDS[name]


def kind_of(adapter: nn.Module) -> AdapterKind:
    """The kind of an (unwrapped) adapter module."""
    return get_kind(adapter.kind)
