"""Rendering tuned and original side by side: the sampler, grids, report, schedulers, CLIP score, flags."""
