"""Which pool tasks to train on next, and how many turns an episode may take at a step.

Samplers weight every task of the pool; `PoolSampler` mixes them by the configured weights and
draws with replacement:
- uniform: every task alike;
- success_band: tasks whose recent success rate lies in [low, high] (unseen tasks count as in the
  band), others get `floor` so nothing starves;
- learning_progress: |recent - previous| success rate, the tasks whose success is changing
  (unseen tasks get the largest weight seen, so new tasks are tried).

The turn cap follows ScalingInter-RL: `caps` = [h1, h2, ...], raised every `every` steps
(`step` schedule) or interpolated linearly between them (`linear`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from curricula.pool import PoolTask
from rollout.types import Task


def uniform_weights(tasks: list[PoolTask]) -> list[float]:
    return [1.0] * len(tasks)


def success_band_weights(tasks: list[PoolTask], low: float, high: float, floor: float = 0.05) -> list[float]:
    return [1.0 if t.recent_success is None or low <= t.recent_success <= high else floor for t in tasks]


def learning_progress_weights(tasks: list[PoolTask], floor: float = 0.05) -> list[float]:
    progress = [None if t.recent_success is None or t.previous_success is None
                else abs(t.recent_success - t.previous_success) for t in tasks]
    top = max((p for p in progress if p is not None), default=1.0) or 1.0
    return [top if p is None else max(p, floor) for p in progress]


class PoolSampler:
    """Tasks drawn from the pool by a weighted mix of samplers (see the module doc)."""

    def __init__(self, pool_tasks: Callable[[], list[PoolTask]], mix: dict[str, float], seed: int,
                 band: tuple[float, float] = (0.1, 0.9)) -> None:
        unknown = set(mix) - {"uniform", "success_band", "learning_progress"}
        if unknown or not any(w > 0 for w in mix.values()):
            raise ValueError(f"sampler mix {mix}: weights of uniform, success_band, learning_progress, one > 0")
        self.pool_tasks, self.mix, self.band = pool_tasks, mix, band
        self.rng = random.Random(seed)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the pool and its statistics (after they change), rather than on every draw."""
        self._tasks = self.pool_tasks()
        self._weights = self.weights(self._tasks)

    def weights(self, tasks: list[PoolTask]) -> list[float]:
        parts = {"uniform": uniform_weights(tasks), "success_band": success_band_weights(tasks, *self.band),
                 "learning_progress": learning_progress_weights(tasks)}
        total = [0.0] * len(tasks)
        for name, share in self.mix.items():
            norm = sum(parts[name]) or 1.0
            total = [t + share * w / norm for t, w in zip(total, parts[name], strict=True)]
        return total

    def sample(self, n: int) -> list[Task]:
        if not self._tasks:
            raise RuntimeError("the task pool is empty")
        return [t.task for t in self.rng.choices(self._tasks, weights=self._weights, k=n)]

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def turn_cap(step: int, caps: list[int], every: int, mode: str = "step") -> int | None:
    """The turn cap at `step` (0-based), or None without a schedule."""
    if not caps:
        return None
    if mode == "step":
        return caps[min(step // max(every, 1), len(caps) - 1)]
    if mode == "linear":
        position = min(step / max(every, 1), len(caps) - 1)
        lower = int(position)
        upper = min(lower + 1, len(caps) - 1)
        return round(caps[lower] + (caps[upper] - caps[lower]) * (position - lower))
    raise ValueError(f"turn-cap schedule mode {mode!r} must be step or linear")
