"""Loading AltDiffusion-family folders through the real loader, and its error messages."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
    RobertaSeriesConfig,
    RobertaSeriesModelWithTransformation,
)

from altadapter.adapters.conditioning import encode_text
from altadapter.model import BaseModelError, load_base, make_pipeline
from altadapter.testing.tiny_models import PRESETS, build_model_dir, read_published_config


def test_loads_tiny_m9_folder(tiny_base):
    assert isinstance(tiny_base.text_encoder, RobertaSeriesModelWithTransformation)
    size = PRESETS["tiny"]
    assert tiny_base.info.project_dim == tiny_base.unet.config.cross_attention_dim == size.project_dim
    assert tiny_base.info.hidden_size == size.hidden_size
    assert tiny_base.info.model_max_length == size.model_max_length
    # XLM-R keeps positions 0..pad_id for padding: N + 2 position embeddings leave N, as m9's 514 leave 512.
    assert tiny_base.text_encoder.config.max_position_embeddings == size.model_max_length + 2
    assert tiny_base.info.max_text_positions == size.model_max_length


def test_loaded_base_is_frozen(tiny_base):
    for module in (tiny_base.text_encoder, tiny_base.unet, tiny_base.vae):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training


def test_loads_m18_style_folder_with_pre_transformation(tmp_path):
    size = dataclasses.replace(PRESETS["tiny"], has_pre_transformation=True, model_max_length=77)
    base = load_base(build_model_dir(tmp_path / "m18", size))
    assert base.text_encoder.has_pre_transformation
    conditioning = encode_text(base, ["a red cat"])
    assert conditioning.shape == (1, size.model_max_length, size.project_dim)
    # The m18 output is the pre-transformation of hidden_states[-2], not the last-layer projection.
    expected = make_pipeline(base).encode_prompt("a red cat", "cpu", 1, False)[0]
    torch.testing.assert_close(conditioning, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_keeps_fingerprint(tiny_model_dir, tiny_base, dtype):
    half = load_base(tiny_model_dir, dtype=dtype)
    assert half.unet.dtype == half.text_encoder.dtype == half.vae.dtype == dtype
    assert half.info.fingerprint == tiny_base.info.fingerprint


def test_fingerprint_tells_two_bases_apart(tmp_path, tiny_base):
    other = load_base(build_model_dir(tmp_path / "other", PRESETS["tiny"], seed=1))
    assert other.info.fingerprint != tiny_base.info.fingerprint


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(BaseModelError, match="no such folder.*local diffusers folder"):
        load_base(tmp_path / "nothing-here")


def test_folder_without_model_index_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="model_index.json is missing"):
        load_base(tmp_path / "empty")


def test_other_model_type_is_refused(tiny_model_dir, tmp_path):
    clip_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "sd"))
    config_path = clip_dir / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["CLIPTextModel"]
    config_path.write_text(json.dumps(config))
    index_path = clip_dir / "model_index.json"
    index_path.write_text(
        json.dumps({**json.loads(index_path.read_text()), "_class_name": "StableDiffusionPipeline"})
    )
    with pytest.raises(BaseModelError, match="StableDiffusionPipeline folder.*CLIPTextModel.*AltDiffusion"):
        load_base(clip_dir)


def test_unreachable_hub_id_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(BaseModelError) as error:
        load_base("BAAI/AltDiffusion-m9")
    message = str(error.value)
    assert "\n" not in message
    assert "BAAI/AltDiffusion-m9" in message
    assert "--model_path /path/to/AltDiffusion-m9" in message


def test_shipped_m9_configs_describe_the_published_model():
    text = RobertaSeriesConfig(**read_published_config("altdiffusion-m9", "text_encoder"))
    unet = read_published_config("altdiffusion-m9", "unet")
    assert (text.hidden_size, text.project_dim, text.max_position_embeddings) == (1024, 768, 514)
    assert (text.num_hidden_layers, text.vocab_size, text.pad_token_id) == (24, 250002, 1)
    assert unet["cross_attention_dim"] == text.project_dim
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert read_published_config("altdiffusion-m9", "vae")["scaling_factor"] == 0.18215
