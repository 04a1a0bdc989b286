"""Text encoding: parity with the stock pipeline, both adapters, gradients, strength blending."""

from __future__ import annotations

import logging

import pytest
import torch

from altadapter.adapters.conditioning import conditioning_length, encode_prompt_pair, encode_text
from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.prompt import PromptAdapter, PromptConfig, prompt_init_from_text, text_token_budget
from altadapter.model import make_pipeline

PROMPTS = ["1girl, solo, red hair, long dress", "a cat on a blue house，simple background"]


def mlp_for(base) -> MLPAdapter:
    return MLPAdapter(MLPConfig(dim=base.info.project_dim))


def prompt_adapter_from_text(base, text: str = "red green blue cat", num_prompts: int = 4) -> PromptAdapter:
    ids = base.tokenizer(text, add_special_tokens=False).input_ids
    init = prompt_init_from_text(
        base.text_encoder.get_input_embeddings().weight, ids, num_prompts, torch.Generator().manual_seed(0)
    )
    return PromptAdapter(PromptConfig(dim=base.info.hidden_size, num_prompts=num_prompts), init)


def test_original_matches_stock_encode_prompt(tiny_base):
    stock, _ = make_pipeline(tiny_base).encode_prompt(PROMPTS, "cpu", 1, False)
    ours = encode_text(tiny_base, PROMPTS)
    assert ours.shape == (2, tiny_base.info.model_max_length, tiny_base.info.project_dim)
    assert torch.equal(ours, stock)


def test_untrained_mlp_reproduces_original(tiny_base):
    assert torch.equal(encode_text(tiny_base, PROMPTS, mlp_for(tiny_base)), encode_text(tiny_base, PROMPTS))


def test_one_layer_mlp_is_one_linear_with_m9_parameter_count():
    adapter = MLPAdapter(MLPConfig(dim=768, num_layers=1))
    assert [type(m).__name__ for m in adapter.layers] == ["Linear"]
    assert sum(p.numel() for p in adapter.parameters()) == 590_592
    assert PromptAdapter(PromptConfig(dim=1024, num_prompts=100)).embeddings.numel() == 102_400


def test_prompt_adapter_from_text_changes_conditioning_deterministically(tiny_base):
    first = encode_text(tiny_base, PROMPTS, prompt_adapter_from_text(tiny_base))
    second = encode_text(tiny_base, PROMPTS, prompt_adapter_from_text(tiny_base))
    assert torch.equal(first, second)
    assert first.shape == encode_text(tiny_base, PROMPTS).shape
    assert not torch.allclose(first, encode_text(tiny_base, PROMPTS))


def test_prompt_init_copies_word_embeddings_of_the_text(tiny_base):
    adapter = prompt_adapter_from_text(tiny_base, "red cat", num_prompts=2)
    ids = tiny_base.tokenizer("red cat", add_special_tokens=False).input_ids
    assert torch.equal(adapter.embeddings.data, tiny_base.text_encoder.get_input_embeddings().weight[ids])


def test_prompt_vectors_follow_bos_with_xlmr_positions(tiny_base):
    """Spliced in by hand, the same vectors as real tokens give the same output as the token ids."""
    words = tiny_base.tokenizer("red green", add_special_tokens=False).input_ids
    adapter = PromptAdapter(
        PromptConfig(dim=tiny_base.info.hidden_size, num_prompts=len(words)),
        tiny_base.text_encoder.get_input_embeddings().weight[words],
    )
    budget = text_token_budget(tiny_base, adapter.config.num_prompts)
    tuned = encode_text(tiny_base, ["a cat"], adapter)
    # "<s> red green a cat </s>" padded to the same length, encoded as plain token ids.
    ids = tiny_base.tokenizer("red green a cat", padding="max_length", max_length=budget + len(words))
    plain = tiny_base.text_encoder(
        torch.tensor([ids.input_ids]), attention_mask=torch.tensor([ids.attention_mask]), return_dict=True
    )[0]
    torch.testing.assert_close(tuned, plain, rtol=1e-5, atol=1e-5)


def test_prompt_adapter_respects_position_limit(tiny_base):
    adapter = PromptAdapter(PromptConfig(dim=tiny_base.info.hidden_size, num_prompts=10))
    assert conditioning_length(tiny_base, adapter) == tiny_base.info.max_text_positions
    assert text_token_budget(tiny_base, adapter.config.num_prompts) == tiny_base.info.max_text_positions - 10
    too_many = PromptAdapter(PromptConfig(dim=tiny_base.info.hidden_size, num_prompts=31))
    with pytest.raises(ValueError, match="leave no room for text.*at most 30"):
        encode_text(tiny_base, PROMPTS, too_many)


def test_long_prompt_is_truncated_with_a_warning_naming_it(tiny_base, caplog):
    long_prompt = ", ".join(["red hair"] * 40)
    with caplog.at_level(logging.WARNING, logger="altadapter.encoding"):
        conditioning = encode_text(tiny_base, [long_prompt])
    assert conditioning.shape[1] == tiny_base.info.model_max_length
    assert f"prompt truncated to {tiny_base.info.model_max_length} of its" in caplog.text
    assert "red hair, red hair" in caplog.text


def test_prompt_pair_feeds_a_stock_pipeline_call(tiny_base):
    adapter = prompt_adapter_from_text(tiny_base)
    positive, negative = encode_prompt_pair(tiny_base, PROMPTS[:1], adapter, negative_prompt="")
    assert positive.shape == negative.shape
    assert torch.equal(negative, encode_text(tiny_base, [""], adapter))
    image = make_pipeline(tiny_base)(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=10,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
