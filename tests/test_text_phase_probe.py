"""The text phase's masked-language-modelling option and demo/probe_text_phase.py, the steering research's
harness (seconds: a few steps of each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from script_helpers import run_as_main

from altadapter.testing.tiny_models import PRESETS, build_text_encoder, build_tokenizer
from toyworld import captions
from toyworld.base_config import ToyBaseConfig
from toyworld.base_data import build_caption_bank, xlmr_positions
from toyworld.text_pretraining import masked_lm_loss


@pytest.fixture(scope="module")
def tokenizer_and_bank():
    tokenizer = build_tokenizer(captions.TOY_VOCABULARY, 64)
    bank = build_caption_bank(tokenizer, ToyBaseConfig(captions_per_combo=2), np.random.default_rng(0))
    return tokenizer, bank


def test_masked_lm_corrupts_only_words_and_reads_back_the_originals(tokenizer_and_bank):
    tokenizer, bank = tokenizer_and_bank
    torch.manual_seed(0)
    encoder = build_text_encoder(PRESETS["tiny"], len(tokenizer))
    seen = []
    encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    ids = bank.varied.flatten(0, 1)  # (180, 64)
    head = torch.nn.Linear(encoder.config.project_dim, encoder.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    loss = masked_lm_loss(encoder, head, ids, xlmr_positions(ids, 1), bank, generator, rate=1.0)
    (corrupted,) = seen
    words = ~torch.isin(ids, bank.specials)
    assert torch.equal(corrupted[~words], ids[~words])  # <s>, </s> and padding untouched
    masked = (corrupted == tokenizer.mask_token_id)[words].float().mean().item()
    kept = (corrupted == ids)[words].float().mean().item()  # 10% kept, and a few random words that match
    assert 0.75 < masked < 0.85 and 0.08 < kept < 0.15, (masked, kept)
    # An untrained head reads back the vocabulary at chance: the cross-entropy of a near-uniform guess.
    assert loss.item() == pytest.approx(np.log(encoder.config.vocab_size), rel=0.1)
    loss.backward()
    assert head.weight.grad is not None and encoder.get_input_embeddings().weight.grad.abs().sum() > 0


def test_probe_text_phase_trains_an_encoder_and_scores_every_adapter(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    common = ["--text_steps", "2", "--steering_steps", "2", "--hidden_size", "32", "--num_heads", "2"]
    for weight in ("0", "1"):
        flags = [*common, "--masked_lm_weight", weight, "--num_prompts", "4", "--results", results]
        assert run_as_main("demo/probe_text_phase.py", *flags) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["flags"]["masked_lm_weight"] for r in records] == [0.0, 1.0]
    for record in records:
        assert record["size"]["hidden_size"] == 32 and record["text_phase"]["steps"] == 2
        adapters = ["plain probe", "mlp", "prompt", "prompt, reparameterised", "prompt, deep"]
        assert list(record["scores"]) == adapters
        assert all(0 <= scores["all"] <= 1 for scores in record["scores"].values())
    # The objective changes the encoder: the same seed with masked-LM gives other features to the probe.
    assert records[0]["text_phase"]["spread"] != records[1]["text_phase"]["spread"]
    capsys.readouterr()
    assert run_as_main("demo/probe_text_phase.py", "--table", "--results", results) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == 2 and "masked-LM" not in rows[0] and "masked-LM x1" in rows[1], rows
    assert "| 2 x 32, 2 heads | 64 | 0 |" in rows[0], rows[0]
