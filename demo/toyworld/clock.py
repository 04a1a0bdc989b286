"""Time and learning rate of the base trainer's phases: a phase stops at its step count or its seconds."""

from __future__ import annotations

import math
import time


def schedule(progress: float, warmup: float) -> float:
    """LR multiplier: linear warm-up over the first `warmup` of the run, then cosine down to 0.1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


class Budget:
    """Seconds left of the whole run's time budget, handed out to its phases."""

    def __init__(self, total_s: float) -> None:
        self.total_s, self.start = total_s, time.perf_counter()

    def left(self) -> float:
        return max(1.0, self.total_s - (time.perf_counter() - self.start))

    def share(self, fraction: float) -> float:
        """At most `fraction` of the whole budget, and never more than is left."""
        return min(self.left(), fraction * self.total_s)


class Clock:
    """Progress of a phase: the larger of steps done / max steps and seconds used / seconds allowed."""

    def __init__(self, max_steps: int, budget_s: float) -> None:
        self.max_steps, self.budget_s, self.start = max_steps, budget_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        return max(step / self.max_steps, self.elapsed() / self.budget_s)

    def status(self, step: int) -> str:
        """Seconds so far, steps per second and the seconds this phase has left, for a progress line."""
        elapsed, progress = self.elapsed(), self.progress(step)
        left = elapsed * (1 - progress) / max(progress, 1e-9)
        return f"{elapsed:.0f} s  {step / max(elapsed, 1e-9):.2f} steps/s  ~{left:.0f} s left"
