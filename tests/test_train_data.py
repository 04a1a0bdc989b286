"""The data side of training: kohya's repeats, caption shuffling and dropout, aspect-ratio buckets, and the
draws that make a resumed run exact. What every kind does with a `datasets` source is in
`test_kind_contract.py`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_kind_contract import encoder_calls
from training_helpers import adapter_tensors, common_args, train_in_process

from altadapter.data.records import Record
from altadapter.training.batches import BatchOrder, MicroBatches, batch_indices, step_generator
from altadapter.training.caches import LatentCache
from altadapter.training.captions import augment_caption
from altadapter.training.config import CaptionConfig, OptimConfig

CAPTION = "1girl, solo, red hair, dress, smile, hat"
OFF = CaptionConfig(False, 0, ",", 0.0, 0.0)


def captions_config(**changes) -> CaptionConfig:
    return CaptionConfig(**{**OFF.__dict__, **changes})


def test_shuffling_keeps_the_first_n_tags_and_reproduces_under_a_seed():
    config = captions_config(shuffle_caption=True, keep_tokens=2)
    shuffles = [augment_caption(CAPTION, config, torch.Generator().manual_seed(seed)) for seed in range(8)]
    for shuffled in shuffles:
        tags = shuffled.split(", ")
        assert tags[:2] == ["1girl", "solo"] and sorted(tags[2:]) == sorted(CAPTION.split(", ")[2:])
    assert len(set(shuffles)) > 1
    again = [augment_caption(CAPTION, config, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert again == shuffles


def test_tag_and_caption_dropout_spare_the_kept_tags():
    generator = torch.Generator().manual_seed(0)
    every_tag = captions_config(keep_tokens=2, caption_tag_dropout_rate=1.0)
    assert augment_caption(CAPTION, every_tag, generator) == "1girl, solo"
    assert augment_caption(CAPTION, captions_config(caption_dropout_rate=1.0), generator) == ""
    half = captions_config(caption_tag_dropout_rate=0.5)
    lengths = {len(augment_caption(CAPTION, half, generator).split(", ")) for _ in range(20)}
    assert len(lengths) > 1 and max(lengths) <= 6
    spaced = captions_config(caption_separator=" ", shuffle_caption=True)
    assert sorted(augment_caption("a b c", spaced, generator).split(" ")) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="--caption_dropout_rate 1.5: must be in"):
        captions_config(caption_dropout_rate=1.5)


def fake_cache(records: list[Record], sizes: list[int]) -> LatentCache:
    """A cache of random posteriors, record i in group sizes[i]."""
    groups = sorted(set(sizes))
    location, counts = [], dict.fromkeys(groups, 0)
    for size in sizes:
        location.append((groups.index(size), counts[size]))
        counts[size] += 1
    params = [torch.randn(counts[size], 2, 8, size, size) for size in groups]  # both orientations
    return LatentCache(params, [(8 * s, 8 * s) for s in groups], records, location, 0.18215)


def test_dropout_rates_of_zero_draw_todays_batches_bit_for_bit():
    records = [Record(Path(f"{i}.png"), f"{CAPTION}, tag{i}") for i in range(5)]
    cache = fake_cache(records, [4] * 5)
    optim = OptimConfig(3, 10, 1e-4, "constant", 0, 1, 1.0, 0.0, 7, None, 0.1)
    order = BatchOrder(records, cache.groups(), 3, 7, bucketed=False)
    batches = MicroBatches(cache, order, optim, OFF, True, 1000)
    for step in range(4):
        # The draw as it was before the caption flags existed.
        generator = step_generator(7, step, 1)
        indices = batch_indices(7, step, 1, 2, 3, 5)
        flips = torch.randint(0, 2, (3,), generator=generator)
        latents = cache.sample(indices, flips, generator)
        noise = torch.randn(latents.shape, generator=generator)
        noise += 0.1 * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        timesteps = torch.randint(0, 1000, (3,), generator=generator)
        batch = batches.draw(step, 1, 2)
        assert batch.captions == [records[i].caption for i in indices.tolist()]
        assert torch.equal(batch.latents, latents) and torch.equal(batch.noise, noise)
        assert torch.equal(batch.timesteps, timesteps)
        assert torch.equal(batch.generator.get_state(), generator.get_state())  # nothing more drawn


def test_repeats_and_buckets_make_the_epochs():
    records = [Record(Path(f"{i}.png"), "a", repeats=r) for i, r in enumerate([3, 1, 1, 2, 2])]
    one_epoch = [0, 0, 0, 1, 2, 3, 3, 4, 4]
    flat = BatchOrder(records, [[0, 1, 2, 3, 4]], 3, 0, bucketed=False)
    assert (
        sorted(torch.cat([flat.indices(0, 0, 2), flat.indices(0, 1, 2), flat.indices(1, 0, 2)]).tolist())
        == one_epoch
    )
    bucketed = BatchOrder(records, [[0, 2], [1, 3, 4]], 2, 0, bucketed=True)
    batches = [bucketed.indices(step, process, 2).tolist() for step in range(5) for process in range(2)]
    assert all(set(b) <= {0, 2} or set(b) <= {1, 3, 4} for b in batches)  # one bucket per batch
    # An epoch is 5 batches: the buckets' 4 and 5 slots cut into batches of 2, the last one short.
    epochs = [sorted(i for batch in half for i in batch) for half in (batches[:5], batches[5:])]
    assert epochs == [one_epoch, one_epoch]
    assert sorted(len(b) for b in batches[:5]) == [1, 2, 2, 2, 2] and batches[:5] != batches[5:]
    again = BatchOrder(records, [[0, 2], [1, 3, 4]], 2, 0, bucketed=True)
    assert [again.indices(s, p, 2).tolist() for s in range(5) for p in range(2)] == batches


def test_with_a_caption_flag_the_mlp_encodes_every_step(
    tmp_path, roomy_model_dir, colour_dataset, monkeypatch
):
    args = common_args(colour_dataset, roomy_model_dir, tmp_path, "run", "--shuffle_caption")
    two, six = (encoder_calls("mlp", steps, args, monkeypatch) for steps in ("2", "6"))
    assert six - two == 4


def bucket_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    flags = ["--resolution", "24", "--enable_bucket", "--random_flip", "--shuffle_caption"]
    return common_args(data, model, out, "run", *flags, "--caption_tag_dropout_rate", "0.3", *extra)


def test_buckets_train_a_2_to_1_picture_at_2_to_1_and_resume_bit_for_bit(
    aspect_dataset, tiny_model_dir, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="altadapter.training.setup"):
        whole = train_in_process("mlp", bucket_args(aspect_dataset, tiny_model_dir, tmp_path / "whole"))
    assert (
        "aspect-ratio buckets (width x height: training pictures): 16x32: 2, 24x24: 2, 32x16: 2"
        in caplog.text
    )
    stopped = bucket_args(aspect_dataset, tiny_model_dir, tmp_path / "parts", "--max_train_steps", "2")
    train_in_process("mlp", stopped)
    resumed = bucket_args(
        aspect_dataset, tiny_model_dir, tmp_path / "parts", "--resume_from_checkpoint", "latest"
    )
    resumed = train_in_process("mlp", resumed)
    for name, tensor in adapter_tensors(whole).items():
        assert torch.equal(adapter_tensors(resumed)[name], tensor), name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--enable_bucket", "--min_bucket_reso", "48"],
            "--min_bucket_reso 48 to --max_bucket_reso 64 .* holds no",
        ),
        (["--caption_tag_dropout_rate", "-0.1"], "--caption_tag_dropout_rate -0.1: must be in"),
        (["--keep_tokens", "-1"], "--keep_tokens must be at least 0"),
        (["--max_bucket_reso", "64"], "--max_bucket_reso takes effect only with --enable_bucket"),
    ],
)
def test_bad_caption_and_bucket_flags_fail_before_training(
    flags, message, colour_dataset, tiny_model_dir, tmp_path
):
    with pytest.raises(ValueError, match=message):
        train_in_process("mlp", common_args(colour_dataset, tiny_model_dir, tmp_path, "run", *flags))
    assert not (tmp_path / "run").exists()
