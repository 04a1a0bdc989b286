"""Optional objective scores: AltCLIP image-text similarity, multilingual like the base's text encoder.

score = 100 * cosine(image embedding, text embedding), per image (CLIPScore without its clamp at 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import torch
from PIL import Image
from transformers import AltCLIPModel, AltCLIPProcessor

from altadapter.rendering.sampler import PromptImages


class ClipScorer:
    """An `AltCLIPModel` and its processor from a local folder (for example a copy of BAAI/AltCLIP-m9)."""

    def __init__(
        self, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"--clip_model {path}: no config.json there; pass a local AltCLIP model folder")
        try:
            self.processor = AltCLIPProcessor.from_pretrained(path)
            self.model = AltCLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"--clip_model {path}: not a loadable AltCLIP model ({error})") from error
        text_config = self.model.config.text_config
        # XLM-R numbers positions from pad_token_id + 1, as in the base's text encoder.
        self.max_length = min(
            self.processor.tokenizer.model_max_length,
            text_config.max_position_embeddings - text_config.pad_token_id - 1,
        )

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], text: str) -> list[float]:
        """100 * cosine similarity of each image with `text`."""
        inputs = self.processor(
            text=[text],
            images=list(images),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        outputs = self.model(**inputs)
        image_embeds = torch.nn.functional.normalize(outputs.image_embeds.float(), dim=-1)  # (N, E)
        text_embeds = torch.nn.functional.normalize(outputs.text_embeds.float(), dim=-1)  # (1, E)
        return (100 * image_embeds @ text_embeds.T).squeeze(1).tolist()


def prompt_scores(scorer: ClipScorer, result: PromptImages) -> dict:
    """Mean score over a prompt's images: {"tuned": {scale: mean}, "original": mean}."""
    tuned = {scale: fmean(scorer.scores(images, result.prompt)) for scale, images in result.tuned.items()}
    return {"tuned": tuned, "original": fmean(scorer.scores(result.original, result.prompt))}
