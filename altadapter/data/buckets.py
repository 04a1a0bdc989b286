"""Aspect-ratio buckets, as kohya's sd-scripts make them: sizes of about resolution² pixels, and the one
nearest each picture's aspect.

With buckets a wide picture trains wide instead of losing its sides to a square crop. kohya's defaults are
256 to 1024 pixels a side in steps of 64 at resolution 512; here they scale with the resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from altadapter.data.images import Size, check_resolution


def _round_up(value: float, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


@dataclass(frozen=True)
class BucketRange:
    """Sides from `min_reso` to `max_reso` pixels in steps of `steps`, for pictures of about resolution²."""

    resolution: int
    min_reso: int
    max_reso: int
    steps: int

    @classmethod
    def scaled(
        cls, resolution: int, min_reso: int | None, max_reso: int | None, steps: int | None
    ) -> BucketRange:
        """The range with kohya's defaults scaled to `resolution` (256, 1024, 64 at 512) where a value is None;
        every default a multiple of 8, as the VAE needs."""
        steps = steps or max(8, _round_up(resolution / 8, 8))
        return cls(resolution, min_reso or _round_up(resolution / 2, 8), max_reso or 2 * resolution, steps)

    def __post_init__(self) -> None:
        check_resolution(self.resolution, "--resolution")
        check_resolution(self.min_reso, "--min_bucket_reso")
        check_resolution(self.max_reso, "--max_bucket_reso")
        check_resolution(self.steps, "--bucket_reso_steps")
        if not self.sizes():
            default = BucketRange.scaled(self.resolution, None, None, None)
            raise ValueError(
                f"--min_bucket_reso {self.min_reso} to --max_bucket_reso {self.max_reso} (steps of "
                f"{self.steps}) holds no bucket of about {self.resolution}x{self.resolution} pixels; widen it "
                f"(the default at this resolution: --min_bucket_reso {default.min_reso} --max_bucket_reso "
                f"{default.max_reso} --bucket_reso_steps {default.steps})"
            )

    def sizes(self) -> list[Size]:
        """Every bucket (width, height), sorted: for each width from min to max in steps, the largest height
        in steps with width * height <= resolution² (kohya's make_bucket_resolutions), and its transpose."""
        area = self.resolution**2
        sizes: set[Size] = set()
        for width in range(self.min_reso, self.max_reso + 1, self.steps):
            height = min(self.max_reso, area // width // self.steps * self.steps)
            if height >= self.min_reso:
                sizes |= {(width, height), (height, width)}
        return sorted(sizes)


def nearest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The bucket whose aspect is nearest the picture's, in log space so that a portrait and a landscape
    picture are treated alike; a tie goes to the first in `buckets`."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda bucket: abs(math.log(bucket[0] / bucket[1]) - aspect))
