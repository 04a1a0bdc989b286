"""The prompt kind's options beyond the write-up: deep prompts (P-tuning v2) and prefix-tuning's MLP."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import common_args, train_in_process

from altadapter.adapter_io import load_adapter, read_adapter_file, save_adapter
from altadapter.adapters.conditioning import encode_text
from altadapter.adapters.prompt import (
    PromptAdapter,
    PromptConfig,
    PromptKind,
    PromptOptions,
    init_deep_prompts,
)

CAPTION = "1girl, solo, red hair, dress"


def shallow_and_deep(base) -> tuple[PromptAdapter, PromptAdapter]:
    words = base.text_encoder.get_input_embeddings().weight.detach()
    config = PromptConfig(dim=base.info.hidden_size, num_prompts=4)
    shallow = PromptAdapter(config, words[10:14])
    deep = PromptAdapter(dataclasses.replace(config, depth=2), words[10:14])
    return shallow, deep


def test_deep_vectors_start_where_the_input_vectors_lead(tiny_base):
    shallow, deep = shallow_and_deep(tiny_base)
    init_deep_prompts(tiny_base, deep, [CAPTION])
    # On the caption they were taken from, writing the hidden states back over themselves changes nothing.
    torch.testing.assert_close(
        encode_text(tiny_base, [CAPTION], deep), encode_text(tiny_base, [CAPTION], shallow)
    )
    with torch.no_grad():
        deep.deep.add_(1.0)
    assert not torch.allclose(
        encode_text(tiny_base, [CAPTION], deep), encode_text(tiny_base, [CAPTION], shallow)
    )


def test_deep_vectors_train_and_round_trip_through_a_file(tiny_base, tmp_path):
    _, deep = shallow_and_deep(tiny_base)
    encode_text(tiny_base, [CAPTION], deep.requires_grad_(True)).square().mean().backward()
    assert deep.deep.grad is not None and deep.deep.grad.abs().sum() > 0
    loaded, metadata = load_adapter(
        save_adapter(tmp_path / "d.safetensors", deep, tiny_base.info), tiny_base.info
    )
    assert metadata.config["depth"] == 2 and torch.equal(loaded.deep, deep.deep)
    assert torch.equal(encode_text(tiny_base, [CAPTION], loaded), encode_text(tiny_base, [CAPTION], deep))


def test_the_reparameterisation_is_folded_into_plain_vectors_for_the_file(tiny_base, tmp_path):
    config = PromptConfig(dim=tiny_base.info.hidden_size, num_prompts=4, reparam_dim=8)
    adapter = PromptAdapter(config)
    with torch.no_grad():
        adapter.reparam[2].weight.normal_()  # a trained MLP, not the zero it starts at
    folded = PromptKind().for_file(adapter)
    assert folded.config.reparam_dim == 0 and set(folded.state_dict()) == {"embeddings"}
    torch.testing.assert_close(
        encode_text(tiny_base, [CAPTION], folded), encode_text(tiny_base, [CAPTION], adapter)
    )


def test_a_training_run_with_both_options_writes_a_plain_deep_file(colour_dataset, tiny_model_dir, tmp_path):
    argv = common_args(
        colour_dataset, tiny_model_dir, tmp_path, "run", "--num_prompts", "4", "--max_train_steps", "2"
    )
    tensors, metadata = read_adapter_file(
        train_in_process("prompt", [*argv, "--prompt_depth", "2", "--prompt_reparam_dim", "8"])
    )
    assert metadata.config == {"dim": 32, "num_prompts": 4, "depth": 2, "reparam_dim": 0}
    assert set(tensors) == {"embeddings", "deep"} and tensors["deep"].shape == (1, 4, 32)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"prompt_depth": 0}, "--prompt_depth must be at least 1"), ({"prompt_reparam_dim": -1}, "0 \\(off\\)")],
)
def test_bad_option_values_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PromptOptions(**options)


def test_a_depth_beyond_the_encoder_is_refused(tiny_base):
    with pytest.raises(ValueError, match="--prompt_depth 3: this base's text encoder has 2 layers"):
        PromptKind().build(PromptOptions(num_prompts=4, prompt_depth=3), tiny_base, [CAPTION], seed=0)
