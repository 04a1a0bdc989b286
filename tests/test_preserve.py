"""The preservation penalty compares every original position once, prompt vectors' outputs included."""

from __future__ import annotations

import torch

from altadapter.training.preserve import preservation_loss


def test_prompt_vector_outputs_are_held_to_the_positions_they_push_out():
    original = torch.randn(2, 8, 4)  # <s>, text, padding: 8 positions
    vectors = original[:, -3:]  # 3 vector outputs that look like the padding they displace
    tuned = torch.cat([original[:, :1], vectors, original[:, 1:5]], dim=1)  # same length, text shifted
    assert preservation_loss(original, tuned, num_prompts=3).item() == 0.0
    moved = tuned.clone()
    moved[:, 2] += 1.0  # one vector output drifts: the UNet would see it, so the penalty must too
    assert preservation_loss(original, moved, num_prompts=3).item() > 0.0
    shifted_text = tuned.clone()
    shifted_text[:, 5] += 1.0
    assert preservation_loss(original, shifted_text, num_prompts=3).item() > 0.0


def test_a_grown_sequence_holds_the_vector_outputs_to_the_original_padding():
    original = torch.randn(1, 6, 4)
    padding = original[:, -1:].expand(-1, 2, -1)
    tuned = torch.cat([original[:, :1], padding, original[:, 1:]], dim=1)  # 8 positions: nothing pushed out
    assert preservation_loss(original, tuned, num_prompts=2).item() == 0.0


def test_more_prompt_vectors_than_original_positions():
    # AltDiffusion pads to 77 tokens; the write-up's 100 vectors grow the sequence past twice that.
    original = torch.randn(2, 6, 4)
    tuned = torch.cat([original[:, :1], original[:, -1:].expand(-1, 8, -1), original[:, 1:]], dim=1)
    assert preservation_loss(original, tuned, num_prompts=8).item() == 0.0
    tuned[:, 3] += 1.0
    assert preservation_loss(original, tuned, num_prompts=8).item() > 0.0


def test_without_prompt_vectors_it_is_the_plain_mean_squared_distance():
    original, tuned = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    assert preservation_loss(original, tuned).item() == 1.0
