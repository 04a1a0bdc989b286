"""Adapters out: vocab as diffusers textual inversion, LoRA as a PEFT folder, each loaded in a fresh process.

The export script runs here (script_helpers); what loads its files runs in a process of its own, as a stock
user's would, with nothing of this library's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_helpers import run_as_main

import export_adapter as export_script
from altadapter.adapter_io import save_adapter
from altadapter.adapters.conditioning import encode_text
from altadapter.adapters.lora import LoRAAdapter, LoRAConfig
from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.vocab import VocabAdapter, VocabConfig
from altadapter.adapters.vocab_tokens import tag_tokens
from altadapter.model import load_base

REPO = Path(__file__).resolve().parents[1]
TAGS = ("red hair", "solo", "lappland")
# The write-up's prompt format; each tag of TAGS written as the tag, or (in a stock pipeline) as its token.
PROMPTS = ["1girl, solo, red hair, dress", "lappland, blue hair, 1girl, solo", "red_hair，hat"]
# The same prompts as a user of the stock pipeline types them, each tag written as its exported token.
TYPED = ["1girl, <solo>, <red_hair>, dress", "<lappland>, blue hair, 1girl, <solo>", "<red_hair>，hat"]
UNTAGGED = ["1girl, blue hair, dress", "a cat on a house"]


def run_python(*argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def export(adapter_file: Path, fmt: str, model: Path, out: Path) -> None:
    """The export script's command line, run here: only the loading must happen in a fresh process."""
    argv = ["--adapter", adapter_file, "--format", fmt, "--output_dir", out, "--model_path", model]
    assert run_as_main("export_adapter.py", *argv) == 0


# What a stock user's fresh process computes from both exports: the vocab tokens typed into a stock pipeline
# after load_textual_inversion, and the LoRA through peft's PeftModel and through transformers' load_adapter.
LOADER = """
import json, torch
from pathlib import Path
from peft import PeftModel
from altadapter.model import load_base, make_pipeline
model, root, typed = {model!r}, Path({root!r}), {typed!r}
pipe = make_pipeline(load_base(model))
for token in json.loads((root / "ti" / "tokens.json").read_text(encoding="utf-8")).values():
    pipe.load_textual_inversion(str(root / "ti" / (token[1:-1] + ".safetensors")))
embeds = {{p: pipe.encode_prompt(p, "cpu", 1, False)[0] for p in typed}}
base = load_base(model)
# As the stock pipeline encodes: padded to the tokenizer's length, the mask since the config asks for it.
tokens = base.tokenizer({prompts!r}, padding="max_length", max_length=base.info.model_max_length, return_tensors="pt")
with torch.no_grad():
    through_peft = PeftModel.from_pretrained(base.text_encoder, str(root / "peft"))(**tokens)[0]
    encoder = load_base(model).text_encoder
    encoder.load_adapter(str(root / "peft"))
    through_transformers = encoder(**tokens)[0]
torch.save({{"vocab": embeds, "peft": through_peft, "transformers": through_transformers}}, root / "embeds.pt")
"""


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tiny_base, tmp_path_factory) -> dict:
    """A vocab and a LoRA adapter, each exported, and what one fresh process loading both computes."""
    root = tmp_path_factory.mktemp("export")
    config = VocabConfig(dim=tiny_base.info.hidden_size, tags=TAGS, vectors_per_tag=2)
    vocab = VocabAdapter(
        config, torch.randn(config.num_vectors, config.dim, generator=torch.Generator().manual_seed(0))
    )
    export(
        save_adapter(root / "v.safetensors", vocab, tiny_base.info), "diffusers", tiny_model_dir, root / "ti"
    )
    lora_base = load_base(tiny_model_dir)  # its own: the LoRA's layers go into this encoder
    lora = LoRAAdapter(
        LoRAConfig(dim=lora_base.info.hidden_size, num_layers=lora_base.info.num_layers, rank=2)
    )
    for parameter in lora.parameters():
        torch.nn.init.normal_(parameter, std=0.3, generator=torch.Generator().manual_seed(1))
    export(save_adapter(root / "l.safetensors", lora, lora_base.info), "peft", tiny_model_dir, root / "peft")
    loader = LOADER.format(model=str(tiny_model_dir), root=str(root), typed=TYPED + UNTAGGED, prompts=PROMPTS)
    run_python("-c", loader)
    stock = torch.load(root / "embeds.pt")
    return {"root": root, "vocab": vocab, "lora": lora, "lora_base": lora_base, "stock": stock}


def test_vocab_export_loads_as_textual_inversion_and_encodes_as_the_adapter(exported, tiny_base):
    tokens = json.loads((exported["root"] / "ti" / "tokens.json").read_text(encoding="utf-8"))
    assert tokens == {"red hair": "<red_hair>", "solo": "<solo>", "lappland": "<lappland>"}
    readme = (exported["root"] / "ti" / "README.md").read_text(encoding="utf-8")
    assert "pipe.load_textual_inversion(" in readme
    stock, adapter = exported["stock"]["vocab"], exported["vocab"]
    for tagged, typed in zip(PROMPTS, TYPED, strict=True):
        torch.testing.assert_close(stock[typed], encode_text(tiny_base, [tagged], adapter), atol=1e-5, rtol=0)
    for prompt in UNTAGGED:
        assert torch.equal(stock[prompt], encode_text(tiny_base, [prompt]))


def test_lora_export_loads_through_peft_and_transformers(exported):
    base, adapter, loaded = exported["lora_base"], exported["lora"], exported["stock"]
    ours = encode_text(base, PROMPTS, adapter)
    assert not torch.allclose(ours, encode_text(base, PROMPTS), atol=1e-3)  # the LoRA acts
    torch.testing.assert_close(loaded["peft"], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded["transformers"], ours, atol=1e-5, rtol=0)
    assert json.loads((exported["root"] / "peft" / "adapter_config.json").read_text())["r"] == 2


def test_a_kind_or_format_without_an_export_is_one_line_naming_what_exists(tiny_base, tmp_path, capsys):
    path = save_adapter(
        tmp_path / "m.safetensors", MLPAdapter(MLPConfig(dim=tiny_base.info.project_dim)), tiny_base.info
    )
    with pytest.raises(SystemExit) as exit_info:
        export_script.main(
            export_script.parse_args(
                ["--adapter", str(path), "--format", "peft", "--output_dir", str(tmp_path / "out")]
            )
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {path} is a mlp adapter, which has no --format peft; "
        "exports that exist: vocab -> --format diffusers, lora -> --format peft"
    ]
    assert not (tmp_path / "out").exists()


class _Vocabulary:
    def __init__(self, words: dict[str, int]) -> None:
        self.words = words

    def get_vocab(self) -> dict[str, int]:
        return self.words


def test_tokens_the_tokenizer_knows_already_get_a_new_form():
    config = VocabConfig(dim=4, tags=("hat", "long hair"), vectors_per_tag=2)
    tokens = tag_tokens(_Vocabulary({"<hat>": 5, "<hat~>": 6, "▁hat": 7}), config)
    assert tokens == [["<hat~~>", "<hat~~>_1"], ["<long_hair>", "<long_hair>_1"]]
