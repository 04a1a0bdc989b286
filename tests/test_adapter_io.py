"""Adapter files: exact round trips, sizes, and a clear error for every file that must be refused."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file

from altadapter.adapter_io import AdapterFileError, load_adapter, read_adapter_file, save_adapter
from altadapter.adapters.lora import LoRAAdapter, LoRAConfig
from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.prompt import PromptAdapter, PromptConfig
from altadapter.adapters.vocab import VocabAdapter, VocabConfig
from altadapter.model import BaseInfo

M9 = BaseInfo(
    name="BAAI/AltDiffusion-m9",
    hidden_size=1024,
    project_dim=768,
    model_max_length=512,
    max_text_positions=512,
    vocab_size=250002,
    fingerprint="0123456789abcdef",
    num_layers=24,
)
TAGS = ("lappland", "安洁莉娜", "long hair", "^_^")
KiB = 1024


def trained_mlp(dim: int = 768, num_layers: int = 1) -> MLPAdapter:
    adapter = MLPAdapter(MLPConfig(dim=dim, num_layers=num_layers))
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return adapter


def test_mlp_round_trip_is_exact(tmp_path):
    adapter = trained_mlp(num_layers=2)
    path = save_adapter(tmp_path / "a.safetensors", adapter, M9, step=18300, extra={"val_loss": 0.1})
    loaded, metadata = load_adapter(path, M9, expected_kind="mlp")
    assert (
        metadata.kind == "mlp" and metadata.step == 18300 and metadata.config == {"dim": 768, "num_layers": 2}
    )
    assert metadata.base["fingerprint"] == M9.fingerprint and metadata.extra == {"val_loss": 0.1}
    assert {"torch", "diffusers", "transformers", "safetensors", "altadapter"} <= set(metadata.versions)
    for name, tensor in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_prompt_round_trip_is_exact(tmp_path):
    adapter = PromptAdapter(PromptConfig(dim=1024, num_prompts=100))
    loaded, _ = load_adapter(
        save_adapter(tmp_path / "p.safetensors", adapter, M9), M9, expected_kind="prompt"
    )
    assert torch.equal(loaded.embeddings, adapter.embeddings)


def test_file_sizes_match_the_write_up(tmp_path):
    mlp = save_adapter(tmp_path / "mlp.safetensors", trained_mlp(), M9).stat().st_size
    prompt = (
        save_adapter(tmp_path / "p.safetensors", PromptAdapter(PromptConfig(1024, 100)), M9).stat().st_size
    )
    # 2.25 MiB and 400 KiB of fp32 tensors, plus a few KiB of header and metadata.
    assert 590_592 * 4 < mlp < 590_592 * 4 + 4 * KiB
    assert 102_400 * 4 < prompt < 102_400 * 4 + 4 * KiB
    half = save_adapter(tmp_path / "half.safetensors", trained_mlp(), M9, save_dtype="bf16").stat().st_size
    assert 590_592 * 2 < half < 590_592 * 2 + 4 * KiB
    loaded, _ = load_adapter(tmp_path / "half.safetensors", M9)
    assert loaded.layers[0].weight.dtype == torch.float32


def test_kind_mismatch_names_the_right_script(tmp_path):
    path = save_adapter(tmp_path / "p.safetensors", PromptAdapter(PromptConfig(1024, 100)), M9)
    with pytest.raises(
        AdapterFileError, match="is a prompt adapter, not a mlp adapter.*text_encoder_gen_show.py"
    ):
        load_adapter(path, M9, expected_kind="mlp")


def test_dims_mismatch_names_the_base_it_was_trained_on(tmp_path):
    path = save_adapter(
        tmp_path / "a.safetensors", trained_mlp(dim=24), dataclasses.replace(M9, project_dim=24)
    )
    with pytest.raises(AdapterFileError, match="24 wide but the base's project_dim is 768.*AltDiffusion-m9"):
        load_adapter(path, M9)


def test_other_base_fingerprint_is_refused_unless_allowed(tmp_path):
    path = save_adapter(tmp_path / "a.safetensors", trained_mlp(), M9)
    other = dataclasses.replace(M9, fingerprint="fedcba9876543210")
    with pytest.raises(AdapterFileError, match="weights differ.*--allow_other_base"):
        load_adapter(path, other)
    adapter, _ = load_adapter(path, other, allow_other_base=True)
    assert adapter.config.dim == 768


def test_truncated_file_is_refused(tmp_path):
    path = save_adapter(tmp_path / "a.safetensors", trained_mlp(), M9)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(AdapterFileError, match="not a readable .safetensors file.*truncated or corrupt"):
        load_adapter(path, M9)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AdapterFileError, match="no such adapter file"):
        read_adapter_file(tmp_path / "none.safetensors")


class Payload:
    """A pickled object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pickle_is_never_unpickled(tmp_path, capsys, suffix):
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"layers.0.weight": Payload()}))
    with pytest.raises(AdapterFileError, match="refusing to unpickle|not a readable .safetensors"):
        load_adapter(path, M9)
    assert "this must never run" not in capsys.readouterr().out


def test_legacy_state_dict_is_read_with_weights_only(tmp_path):
    adapter = trained_mlp()
    torch.save(adapter.state_dict(), tmp_path / "last-checkpoint-mlp-altm9-single-layer-1-18301.pt")
    loaded, metadata = load_adapter(tmp_path / "last-checkpoint-mlp-altm9-single-layer-1-18301.pt", M9)
    assert metadata.kind == "mlp" and metadata.base == {}
    assert torch.equal(loaded.layers[0].weight, adapter.layers[0].weight)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_adapter(tmp_path / "a.safetensors", trained_mlp(), M9)
    save_adapter(tmp_path / "a.safetensors", trained_mlp(), M9)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_saved_file_gets_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_adapter(tmp_path / "a.safetensors", trained_mlp(), M9)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0600 of a temporary file


def vocab_adapter(dim: int = 1024, vectors_per_tag: int = 2) -> VocabAdapter:
    config = VocabConfig(dim=dim, tags=TAGS, vectors_per_tag=vectors_per_tag)
    return VocabAdapter(config, torch.randn(config.num_vectors, dim))


def lora_adapter(dim: int = 1024, num_layers: int = 24, **options) -> LoRAAdapter:
    adapter = LoRAAdapter(LoRAConfig(dim=dim, num_layers=num_layers, **options))
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return adapter


def test_vocab_round_trip_keeps_the_tag_strings_beside_their_vectors(tmp_path):
    adapter = vocab_adapter()
    path = save_adapter(tmp_path / "v.safetensors", adapter, M9, step=7)
    loaded, metadata = load_adapter(path, M9, expected_kind="vocab")
    assert metadata.kind == "vocab" and metadata.config["tags"] == list(TAGS)
    assert loaded.config == adapter.config and loaded.config.tags == TAGS
    assert torch.equal(loaded.embeddings, adapter.embeddings)
    assert list(load_file(str(path))) == ["embeddings"]  # (8, 1024): rows 2t, 2t + 1 are TAGS[t]'s
    assert 8 * 1024 * 4 < path.stat().st_size < 8 * 1024 * 4 + 4 * KiB


def test_lora_round_trip_stores_only_the_lora_tensors_under_peft_names(tmp_path):
    adapter = lora_adapter(rank=4, alpha=8.0, targets=("query", "value"))
    path = save_adapter(tmp_path / "l.safetensors", adapter, M9)
    loaded, metadata = load_adapter(path, M9, expected_kind="lora")
    assert metadata.config == {
        "dim": 1024,
        "num_layers": 24,
        "rank": 4,
        "alpha": 8.0,
        "targets": ["query", "value"],
    }
    tensors = load_file(str(path))
    assert len(tensors) == 24 * 2 * 2
    assert tensors["roberta.encoder.layer.23.attention.self.value.lora_B.weight"].shape == (1024, 4)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
    full = save_adapter(tmp_path / "full.safetensors", lora_adapter(), M9).stat().st_size
    assert 786_432 * 4 < full < 786_432 * 4 + 32 * KiB  # rank 4 on q, k, v, out: 3 MiB


def test_lora_for_an_encoder_of_other_depth_is_refused(tmp_path):
    path = save_adapter(tmp_path / "l.safetensors", lora_adapter(), M9)
    with pytest.raises(
        AdapterFileError, match="has 24 layers but the base's text encoder has 12.*--model_path"
    ):
        load_adapter(path, dataclasses.replace(M9, num_layers=12))


def test_tensors_that_disagree_with_the_metadata_are_refused(tmp_path):
    path = save_adapter(tmp_path / "v.safetensors", vocab_adapter(), M9)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    save_file(
        load_file(str(path)),
        str(path),
        metadata={**metadata, "config": json.dumps({**config, "tags": config["tags"][:3]})},
    )
    with pytest.raises(AdapterFileError, match="tensors do not match the metadata"):
        load_adapter(path, M9)
    lora = save_adapter(tmp_path / "l.safetensors", lora_adapter(), M9)
    tensors = load_file(str(lora))
    tensors.pop("roberta.encoder.layer.5.attention.output.dense.lora_A.weight")
    with safetensors.safe_open(str(lora), framework="pt") as handle:
        save_file(tensors, str(lora), metadata=handle.metadata())
    with pytest.raises(AdapterFileError, match="tensors do not match the metadata.*layer.5.attention.output"):
        load_adapter(lora, M9)
    save_file(tensors, str(lora), metadata={**metadata, "kind": "dora"})
    with pytest.raises(AdapterFileError, match="kind 'dora', which this version of altadapter"):
        read_adapter_file(lora)
