"""Adapters out: vocab as diffusers textual inversion, LoRA as a PEFT folder, each loaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

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


def export_in_a_fresh_process(adapter_file: Path, fmt: str, model: Path, out: Path) -> None:
    run_python(
        "export_adapter.py",
        "--adapter",
        str(adapter_file),
        "--format",
        fmt,
        "--output_dir",
        str(out),
        "--model_path",
        str(model),
    )


def test_vocab_export_loads_as_textual_inversion_and_encodes_as_the_adapter(
    tiny_model_dir, tiny_base, tmp_path
):
    config = VocabConfig(dim=tiny_base.info.hidden_size, tags=TAGS, vectors_per_tag=2)
    adapter = VocabAdapter(
        config, torch.randn(config.num_vectors, config.dim, generator=torch.Generator().manual_seed(0))
    )
    export_in_a_fresh_process(
        save_adapter(tmp_path / "v.safetensors", adapter, tiny_base.info),
        "diffusers",
        tiny_model_dir,
        tmp_path / "ti",
    )
    tokens = json.loads((tmp_path / "ti" / "tokens.json").read_text(encoding="utf-8"))
    assert tokens == {"red hair": "<red_hair>", "solo": "<solo>", "lappland": "<lappland>"}
    assert "pipe.load_textual_inversion(" in (tmp_path / "ti" / "README.md").read_text(encoding="utf-8")
    loader = textwrap.dedent(
        f"""
        import json, sys, torch
        from pathlib import Path
        from altadapter.model import load_base, make_pipeline
        pipe = make_pipeline(load_base({str(tiny_model_dir)!r}))
        folder = Path({str(tmp_path / "ti")!r})
        for token in json.loads((folder / "tokens.json").read_text(encoding="utf-8")).values():
            pipe.load_textual_inversion(str(folder / (token[1:-1] + ".safetensors")))
        embeds = {{p: pipe.encode_prompt(p, "cpu", 1, False)[0] for p in {TYPED + UNTAGGED!r}}}
        torch.save(embeds, {str(tmp_path / "embeds.pt")!r})
        """
    )
    run_python("-c", loader)
    stock = torch.load(tmp_path / "embeds.pt")
    for tagged, typed in zip(PROMPTS, TYPED, strict=True):
        torch.testing.assert_close(stock[typed], encode_text(tiny_base, [tagged], adapter), atol=1e-5, rtol=0)
    for prompt in UNTAGGED:
        assert torch.equal(stock[prompt], encode_text(tiny_base, [prompt]))


def test_lora_export_loads_through_peft_and_transformers(tiny_model_dir, tmp_path):
    tiny_base = load_base(tiny_model_dir)  # its own: the LoRA's layers go into this encoder
    adapter = LoRAAdapter(
        LoRAConfig(dim=tiny_base.info.hidden_size, num_layers=tiny_base.info.num_layers, rank=2)
    )
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.3, generator=torch.Generator().manual_seed(1))
    export_in_a_fresh_process(
        save_adapter(tmp_path / "l.safetensors", adapter, tiny_base.info),
        "peft",
        tiny_model_dir,
        tmp_path / "peft",
    )
    loader = textwrap.dedent(
        f"""
        import torch
        from peft import PeftModel
        from altadapter.model import load_base
        base = load_base({str(tiny_model_dir)!r})
        # As the stock pipeline encodes: padded to the tokenizer's length, the mask since the config asks for it.
        tokens = base.tokenizer({PROMPTS!r}, padding="max_length", max_length=base.info.model_max_length, return_tensors="pt")
        with torch.no_grad():
            through_peft = PeftModel.from_pretrained(base.text_encoder, {str(tmp_path / "peft")!r})(**tokens)[0]
            encoder = load_base({str(tiny_model_dir)!r}).text_encoder
            encoder.load_adapter({str(tmp_path / "peft")!r})
            through_transformers = encoder(**tokens)[0]
        torch.save({{"peft": through_peft, "transformers": through_transformers}}, {str(tmp_path / "embeds.pt")!r})
        """
    )
    run_python("-c", loader)
    loaded = torch.load(tmp_path / "embeds.pt")
    ours = encode_text(tiny_base, PROMPTS, adapter)
    assert not torch.allclose(ours, encode_text(tiny_base, PROMPTS), atol=1e-3)  # the LoRA acts
    torch.testing.assert_close(loaded["peft"], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded["transformers"], ours, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 2


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
