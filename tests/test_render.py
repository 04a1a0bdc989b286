"""The side-by-side sampler: stock-pipeline parity, same noise across rows, batching, files and report."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest
import torch
from PIL import Image

from altadapter.adapter_io import AdapterMetadata
from altadapter.adapters.conditioning import conditioning_length
from altadapter.adapters.mlp import MLPAdapter, MLPConfig
from altadapter.adapters.prompt import PromptAdapter, PromptConfig
from altadapter.data.prompts import read_prompts
from altadapter.model import make_pipeline
from altadapter.rendering import report
from altadapter.rendering.grids import labelled_rows
from altadapter.rendering.sampler import (
    RenderSettings,
    comparison_rows,
    default_size,
    image_seed,
    render_comparison,
    render_rows,
    save_comparison,
)
from altadapter.rendering.schedulers import SCHEDULERS, TooFewStepsError, least_steps, make_scheduler

PROMPTS = ["1girl, solo, red hair", "a cat on a blue house"]
# DDIM gives usable pixels in 3 steps; PNDM needs 10 to get past its Runge-Kutta warm-up.
FAST = RenderSettings(num_images=2, num_inference_steps=3, scheduler="ddim", height=32, width=32)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def strong_mlp(base) -> MLPAdapter:
    """A trained-looking MLP: random weights big enough to change a tiny random model's images."""
    adapter = MLPAdapter(MLPConfig(dim=base.info.project_dim))
    torch.nn.init.normal_(adapter.layers[0].weight, std=3.0, generator=torch.Generator().manual_seed(0))
    return adapter


def prompt_adapter(base, text: str = "red cat", num_prompts: int = 2) -> PromptAdapter:
    """Prompt vectors copied from the word embeddings of `text`."""
    ids = base.tokenizer(text, add_special_tokens=False).input_ids[:num_prompts]
    init = base.text_encoder.get_input_embeddings().weight[ids] * 20  # louder than a word, to show in pixels
    return PromptAdapter(PromptConfig(dim=base.info.hidden_size, num_prompts=num_prompts), init)


@pytest.fixture(scope="module")
def rendered(tiny_base):
    """Two prompts with a prompt adapter at two scales, rendered once for the file and report tests."""
    settings = dataclasses.replace(FAST, scales=(0.5, 1.0))
    return settings, render_comparison(
        tiny_base, prompt_adapter(tiny_base), PROMPTS, settings=settings, progress=False
    )


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_original_row_is_the_stock_pipeline_pixel_for_pixel(tiny_base, scheduler):
    steps = 10 if scheduler == "pndm" else 4
    settings = dataclasses.replace(FAST, scheduler=scheduler, num_inference_steps=steps)
    ours = render_comparison(tiny_base, None, PROMPTS[:1], settings=settings, progress=False)[0].original
    pipeline = make_pipeline(tiny_base, make_scheduler(tiny_base, scheduler))
    pipeline.set_progress_bar_config(disable=True)
    stock = pipeline(
        PROMPTS[0],
        num_inference_steps=steps,
        guidance_scale=settings.guidance_scale,
        height=32,
        width=32,
        num_images_per_prompt=2,
        # One generator per image, seeded as the renderer seeds them; Euler a draws its step noise from them.
        generator=[torch.Generator().manual_seed(image_seed(0, 0, j)) for j in range(2)],
    ).images
    assert np.array_equal(pixels(ours), pixels(stock))


@pytest.mark.parametrize("skip_prk_steps", [False, True])
def test_each_scheduler_renders_its_least_steps_and_refuses_fewer_in_one_line(tiny_base, skip_prk_steps):
    # m9's scheduler config (a DDIM one) leaves skip_prk_steps unset: PNDM then warms up with Runge-Kutta.
    base = dataclasses.replace(
        tiny_base, scheduler_config={**tiny_base.scheduler_config, "skip_prk_steps": skip_prk_steps}
    )
    for name in SCHEDULERS:
        least = least_steps(name, base.scheduler_config)
        assert least == (4 if name == "pndm" and not skip_prk_steps else 1)
        settings = RenderSettings(
            num_images=1, num_inference_steps=least, scheduler=name, height=16, width=16
        )
        (result,) = render_comparison(base, None, PROMPTS[:1], settings=settings, progress=False)
        assert len(result.original) == 1
        if least > 1:
            with pytest.raises(ValueError, match="could not be broadcast"):  # what diffusers says itself
                make_scheduler(base, name).set_timesteps(least - 1)
            fewer = dataclasses.replace(settings, num_inference_steps=least - 1)
            with pytest.raises(TooFewStepsError, match=f"needs at least {least} .*--scheduler ddim or"):
                render_comparison(base, None, PROMPTS[:1], settings=fewer, progress=False)


def test_identity_mlp_at_scale_one_renders_exactly_the_original(tiny_base):
    result = render_comparison(
        tiny_base,
        MLPAdapter(MLPConfig(dim=tiny_base.info.project_dim)),
        PROMPTS[:1],
        settings=FAST,
        progress=False,
    )[0]
    assert np.array_equal(pixels(result.tuned[1.0]), pixels(result.original))


def test_batched_rows_match_each_row_rendered_alone_with_ancestral_noise(tiny_base):
    settings = dataclasses.replace(FAST, scheduler="euler_a", scales=(0.0, 1.0), max_batch=5)
    adapter = strong_mlp(tiny_base)
    batched = render_comparison(tiny_base, adapter, PROMPTS, settings=settings, progress=False)
    for row in comparison_rows(adapter, settings.scales):
        alone = render_rows(tiny_base, PROMPTS, [row], settings, progress=False)
        for prompt, result in enumerate(batched):
            together = result.tuned[row.scale] if row.adapter is not None else result.original
            assert np.abs(pixels(together) - pixels(alone[prompt][0])).max() <= 1
    for result in batched:
        assert np.array_equal(pixels(result.tuned[0.0]), pixels(result.original))  # scale 0 is the original
        assert not np.array_equal(pixels(result.tuned[1.0]), pixels(result.original))
        assert not np.array_equal(*pixels(result.original))  # each image has its own noise


def test_scale_zero_is_the_original_row_whatever_batch_it_would_fall_in(tiny_base):
    # CPU kernels round by batch size (a UNet batch of 4 and one of 10 differ by ~2e-6 here); the hook makes
    # that dependence big enough to show in every pixel. With 5 images a batch, prompt 1's original would
    # share a batch with one other image, its scale-0 twin with four.
    def batch_dependent(module, args, output):
        return (output[0] + 0.05 * output[0].shape[0],)

    settings = dataclasses.replace(FAST, scales=(0.0, 1.0), max_batch=5)
    hook = tiny_base.unet.register_forward_hook(batch_dependent)
    try:
        batched = render_comparison(
            tiny_base, strong_mlp(tiny_base), PROMPTS, settings=settings, progress=False
        )
    finally:
        hook.remove()
    for result in batched:
        assert np.array_equal(pixels(result.tuned[0.0]), pixels(result.original))
        assert result.tuned[0.0] is not result.original  # equal images, but each row its own list


def test_conditionings_of_different_lengths_share_the_loop_in_groups(tiny_base):
    # A 77-token base with prompt vectors: tuned conditioning is longer than the original's.
    short = dataclasses.replace(tiny_base, info=dataclasses.replace(tiny_base.info, model_max_length=16))
    adapter = prompt_adapter(short)
    assert conditioning_length(short, adapter) > conditioning_length(short)
    batched = render_comparison(short, adapter, PROMPTS[:1], settings=FAST, progress=False)[0]
    tuned_alone, original_alone = (
        render_rows(short, PROMPTS[:1], [row], FAST, progress=False)[0][0]
        for row in comparison_rows(adapter, (1.0,))
    )
    assert np.abs(pixels(batched.tuned[1.0]) - pixels(tuned_alone)).max() <= 1
    assert np.abs(pixels(batched.original) - pixels(original_alone)).max() <= 1


def test_an_images_noise_does_not_depend_on_other_prompts_or_the_image_count(tiny_base):
    many = render_comparison(tiny_base, None, PROMPTS, settings=FAST, progress=False)
    one = render_comparison(
        tiny_base, None, PROMPTS[:1], settings=dataclasses.replace(FAST, num_images=1), progress=False
    )
    assert np.array_equal(pixels(one[0].original), pixels(many[0].original[:1]))
    assert len({image_seed(0, p, j) for p in range(3) for j in range(3)}) == 9


def test_rendering_leaves_models_and_adapter_as_found(tiny_base):
    adapter = strong_mlp(tiny_base).train().requires_grad_(True)
    modules = (tiny_base.text_encoder, tiny_base.unet, tiny_base.vae, adapter)
    before = [(m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    # No height or width: the model's own size.
    settings = RenderSettings(num_images=1, num_inference_steps=2, scheduler="ddim")
    (result,) = render_comparison(tiny_base, adapter, PROMPTS[:1], settings=settings, progress=False)
    assert result.original[0].size == default_size(tiny_base)
    assert [(m.training, [p.requires_grad for p in m.parameters()]) for m in modules] == before
    assert all(p.grad is None for p in adapter.parameters())
    assert torch.is_grad_enabled()


def test_save_comparison_writes_the_write_up_file_names(rendered, tmp_path):
    settings, results = rendered
    written = save_comparison(results, tmp_path, settings)
    names = {path.name for path in written}
    assert {
        "grid_1_with_samples_2_with_steps_3.png",
        "grid_1_with_samples_2_with_steps_3_original.png",
    } <= names
    assert "grid_1_with_samples_2_with_steps_3_scale_0.5.png" in names
    assert "compare_1_with_samples_2_with_steps_3.png" in names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files left behind
    with Image.open(tmp_path / "compare_0_with_samples_2_with_steps_3.png") as compare:
        side = FAST.height
        assert compare.height == 3 * side and compare.width > 2 * side  # 2 scales + original, label column


def test_labelled_rows_draw_each_label_left_of_its_row():
    tiles = [Image.new("RGB", (20, 20), (0, 255, 0))] * 2
    image = np.asarray(labelled_rows([("tuned", tiles), ("original", tiles)]))
    label_width = image.shape[1] - 40
    assert image.shape[:2] == (40, label_width + 40) and label_width > 0
    for top in (0, 20):
        assert (image[top : top + 20, :label_width] < 128).any()  # ink in each row's label cell
        assert (image[top : top + 20, label_width:] == (0, 255, 0)).all()


def test_settings_fail_fast_naming_the_field():
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        RenderSettings(num_images=0)
    with pytest.raises(ValueError, match="height 30: must be a positive multiple of 8"):
        RenderSettings(height=30)
    with pytest.raises(ValueError, match="scales must be distinct"):
        RenderSettings(scales=(1.0, 1.0))
    with pytest.raises(ValueError, match="scheduler must be one of pndm"):
        RenderSettings(scheduler="lms")


def test_read_prompts_skips_blank_lines_and_a_bom(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffred hair, 1girl\r\n\n  \na cat，黑暗精灵\n".encode())
    assert read_prompts(path) == ["red hair, 1girl", "a cat，黑暗精灵"]
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=re.escape(f"--prompts {path} holds no prompts") + ".*prompts_generator.py"
    ):
        read_prompts(path)


def test_nearest_tokens_find_the_words_the_vectors_came_from(tiny_base):
    adapter = prompt_adapter(tiny_base, "red cat")
    nearest = report.nearest_tokens(tiny_base, adapter, top_k=3)
    assert [tokens[0][0] for tokens in nearest] == ["▁red", "▁cat"]
    assert all(tokens[0][1] == pytest.approx(1.0) and len(tokens) == 3 for tokens in nearest)
    assert all(tokens[0][1] >= tokens[1][1] >= tokens[2][1] for tokens in nearest)


def make_record(base, settings, results, kind="prompt"):
    metadata = AdapterMetadata(kind, {"dim": 1}, {}, step=5, extra={"validation_loss": 0.125})
    runtime = {"device": "cpu", "dtype": "fp32", "clip_model": None}
    return report.build_record(
        results, settings, base=base, adapter_path=f"{kind}.safetensors", metadata=metadata, runtime=runtime
    )


def test_report_table_links_every_scale_and_the_settings(tiny_base, rendered):
    record = make_record(tiny_base, *rendered)
    text = report.format_report(record)
    assert "| index | prompt | tuned, scale 0.5 | tuned, scale 1 | original | side by side |" in text
    assert "| 1 | a cat on a blue house | ![](grid_1_with_samples_2_with_steps_3_scale_0.5.png) |" in text
    assert "validation_loss: 0.125" in text and "trained 5 steps" in text and "ddim, 3 steps" in text


def test_full_table_puts_mlp_prompt_and_a_shared_original_side_by_side(tiny_base, rendered):
    prompt_record = make_record(tiny_base, *rendered)
    mlp_record = make_record(tiny_base, *rendered, kind="mlp")
    text = report.format_report(mlp_record, prompt_record, "../prompt")
    assert "| index | prompt | MLP | Prompt | original |" in text
    assert (
        "| 0 | 1girl, solo, red hair | ![](grid_0_with_samples_2_with_steps_3.png) "
        "| ![](../prompt/grid_0_with_samples_2_with_steps_3.png) "
        "| ![](grid_0_with_samples_2_with_steps_3_original.png) |"
    ) in text
    reseeded = copy.deepcopy(prompt_record)
    reseeded["settings"]["seed"] = 1
    text = report.format_report(mlp_record, reseeded, "../prompt")
    assert "| MLP | Prompt | original (MLP run) | original (Prompt run) |" in text


def test_compare_with_refuses_the_same_kind_or_other_prompts(tiny_base, rendered):
    record = make_record(tiny_base, *rendered)
    with pytest.raises(ValueError, match="holds prompt adapter images too.*text_encoder_gen_show_mlp.py"):
        report.check_comparable("prompt", PROMPTS, record, "images/prompt")
    with pytest.raises(ValueError, match="rendered from other prompts"):
        report.check_comparable("mlp", PROMPTS[:1], record, "images/prompt")
