"""The LoRA adapter: peft's LoRA layers in the shared encoder, the original model kept exactly beside it."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

from altadapter.adapters.conditioning import encode_text
from altadapter.adapters.lora import LoRAAdapter, LoRAConfig, LoRAKind, LoRAOptions
from altadapter.model import load_base

PROMPTS = ["1girl, solo, red hair, long dress", "a cat on a blue house，simple background"]


@pytest.fixture
def base(tiny_model_dir):
    """A base of its own: attaching a LoRA injects peft layers into the encoder, which other tests share."""
    return load_base(tiny_model_dir)


def lora_for(base, *, seed: int = 0, **options) -> LoRAAdapter:
    """A LoRA adapter whose B matrices are random, as after training."""
    torch.manual_seed(seed)
    info = base.info
    adapter = LoRAAdapter(LoRAConfig(dim=info.hidden_size, num_layers=info.num_layers, **options))
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.3)
    return adapter


def base_weights(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's own weights under their original names, whatever peft wrapped around them."""
    return {
        name.replace(".base_layer", ""): tensor.clone()
        for name, tensor in encoder.state_dict().items()
        if "lora_" not in name
    }


def test_untrained_lora_is_the_original_encoder(base):
    info = base.info
    adapter = LoRAAdapter(LoRAConfig(dim=info.hidden_size, num_layers=info.num_layers))
    assert torch.equal(encode_text(base, PROMPTS, adapter), encode_text(base, PROMPTS))


def test_scale_zero_and_every_encoding_without_it_stay_the_original(base):
    original = encode_text(base, PROMPTS)
    adapter = lora_for(base)
    tuned = encode_text(base, PROMPTS, adapter)
    assert not torch.allclose(tuned, original)
    assert torch.equal(encode_text(base, PROMPTS, adapter, scale=0.0), original)
    # The LoRA layers stay in the encoder, inactive: its own forward is the original's, bit for bit.
    assert torch.equal(encode_text(base, PROMPTS), original)
    assert torch.equal(encode_text(base, PROMPTS, adapter, scale=1.0), tuned)
    torch.testing.assert_close(encode_text(base, PROMPTS, adapter, scale=0.5), (original + tuned) / 2)


def test_adapters_sharing_one_base_do_not_interfere(base):
    first, second = lora_for(base, seed=0), lora_for(base, seed=1, rank=2, targets=("value", "out"))
    first_alone, second_alone = encode_text(base, PROMPTS, first), encode_text(base, PROMPTS, second)
    assert not torch.allclose(first_alone, second_alone)
    assert torch.equal(encode_text(base, PROMPTS, first), first_alone)
    # Attaching the second left the first trainable (peft's set_adapter switches requires_grad).
    assert all(p.requires_grad for p in first.parameters())


def test_gradients_reach_only_the_lora_weights(base):
    before = base_weights(base.text_encoder)
    adapter = lora_for(base).requires_grad_(True)
    conditioning = encode_text(base, PROMPTS, adapter)
    base.unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=conditioning)[
        0
    ].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    owned = {id(p) for p in adapter.parameters()}
    others = [p for p in base.text_encoder.parameters() if id(p) not in owned]
    assert others and all(not p.requires_grad and p.grad is None for p in others)
    after = base_weights(base.text_encoder)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_weights_are_peft_state_dict_keys_and_load_into_peft_injected_encoder(base, tiny_model_dir):
    adapter = lora_for(base, rank=2, alpha=4.0)
    tuned = encode_text(base, PROMPTS, adapter)
    ours = adapter.state_dict()
    peft_view = get_peft_model_state_dict(base.text_encoder, adapter_name=adapter.adapter_name)
    assert sorted(ours) == sorted(peft_view) and all(torch.equal(ours[k], peft_view[k]) for k in ours)
    assert "roberta.encoder.layer.0.attention.self.query.lora_A.weight" in ours
    # What diffusers does with a text-encoder LoRA: inject, then set_peft_model_state_dict.
    stock = load_base(tiny_model_dir)
    inject_adapter_in_model(adapter.config.peft_config(), stock.text_encoder)
    set_peft_model_state_dict(stock.text_encoder, ours)
    torch.testing.assert_close(encode_text(stock, PROMPTS), tuned, rtol=1e-5, atol=1e-5)


def test_parameter_counts_on_the_tiny_model_and_m9():
    def count(config: LoRAConfig) -> int:
        return sum(p.numel() for p in LoRAAdapter(config).parameters())

    assert count(LoRAConfig(dim=32, num_layers=2)) == 2 * 4 * 32 * 4 * 2  # 2,048
    assert count(LoRAConfig(dim=1024, num_layers=24)) == 786_432  # rank 4 on q, k, v, out of m9
    assert count(LoRAConfig(dim=1024, num_layers=24, rank=8, targets=("query", "value"))) == 786_432


def test_config_keeps_targets_in_one_order_and_refuses_unknown_ones():
    assert LoRAConfig(dim=8, num_layers=1, targets=["out", "query"]).targets == ("query", "out")
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) \['q'\]"):
        LoRAConfig(dim=8, num_layers=1, targets=("q",))
    with pytest.raises(ValueError, match="alpha must be positive"):
        LoRAConfig(dim=8, num_layers=1, alpha=0)


def test_an_encoder_of_another_size_is_refused_in_one_line(base):
    adapter = LoRAAdapter(LoRAConfig(dim=base.info.hidden_size, num_layers=base.info.num_layers + 1))
    with pytest.raises(ValueError, match="no 32-wide Linear roberta.encoder.layer.2.attention.self.query"):
        encode_text(base, PROMPTS, adapter)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 0}, "--rank must be at least 1"),
        ({"lora_alpha": -1.0}, "--lora_alpha must be positive"),
        ({"lora_targets": ["query", "query"]}, "names a projection twice"),
    ],
)
def test_bad_flags_are_refused_before_anything_loads(options, message):
    with pytest.raises(ValueError, match=message):
        LoRAOptions(**options)


def test_flags_build_lora_on_every_layer_with_alpha_defaulting_to_the_rank(base):
    adapter = LoRAKind().build(LoRAOptions(rank=2, lora_targets=["value", "query"]), base, [], seed=0)
    assert adapter.config.num_layers == base.text_encoder.config.num_hidden_layers
    assert adapter.config.alpha == 2.0 and adapter.config.targets == ("query", "value")
    assert len(adapter.state_dict()) == 2 * 2 * adapter.config.num_layers
