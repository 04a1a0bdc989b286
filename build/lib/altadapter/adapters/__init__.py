"""The adapter kinds, one module each, behind one protocol (`kind.AdapterKind`) and a registry.

Adding a kind: a module defining its config, module, options and `AdapterKind` subclass, and one entry in
the tuple below. Every script, file check, report and test then knows it.
"""

from altadapter.adapters import lora, mlp, prompt, vocab
from altadapter.adapters.registry import get_kind, kind_names, kind_of, register_kind

for _kind in (mlp.MLPKind, prompt.PromptKind, vocab.VocabKind, lora.LoRAKind):
    register_kind(_kind())

__all__ = ["get_kind", "kind_names", "kind_of", "register_kind"]
