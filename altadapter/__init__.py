"""Tiny text-encoder adapters that teach a frozen AltDiffusion model a new domain's vocabulary.

The public API, for use in your own diffusers code::

    from altadapter import attach_adapter, detach_adapter, encode_prompt_pair, load_adapter, load_base, make_pipeline

Names are imported on first use, so the data scripts start without loading torch and diffusers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load_base": "altadapter.model",
    "make_pipeline": "altadapter.model",
    "AltDiffusionBase": "altadapter.model",
    "MLPAdapter": "altadapter.adapters.mlp",
    "PromptAdapter": "altadapter.adapters.prompt",
    "VocabAdapter": "altadapter.adapters.vocab",
    "LoRAAdapter": "altadapter.adapters.lora",
    "load_adapter": "altadapter.adapter_io",
    "save_adapter": "altadapter.adapter_io",
    "encode_text": "altadapter.adapters.conditioning",
    "encode_prompt_pair": "altadapter.adapters.conditioning",
    "attach_adapter": "altadapter.attach",
    "detach_adapter": "altadapter.attach",
    "export_adapter": "altadapter.export",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'altadapter' has no attribute {name!r}")
