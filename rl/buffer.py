"""The bounded buffer between rollout and learner: scored groups, the staleness bound, and the
accounting of every group from start to trained or dropped.

Staleness is counted in policy versions: a group trained at version v whose oldest policy token
was sampled at version u is v - u stale. Two mechanisms keep it at most `max_staleness`:

- admission: a new group may start only while fewer than (v + max_staleness + 1) * groups_per_step
  groups have been started (AReaL's rule), so generation runs at most `max_staleness` versions
  ahead of the learner. With max_staleness = 0 exactly one step's groups exist per version: the
  synchronous, on-policy loop.
- a check at take time: a group that finished late (a long episode overtaken by newer ones) and
  is now too stale is dropped, counted, and its admission slot returned so a fresh one replaces it.

With `filter_uniform`, a group whose rewards are all equal (no group-relative signal) is filtered
out the same way and replaced by a fresh one (DAPO's dynamic sampling with refill), up to
`max_refills` per step so that a policy that fails everything still trains. Filtered groups are
kept aside until `take_filtered`: the learner never sees them, but the curriculum must (a task the
policy always fails or always solves is what it most needs to know about).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rollout.types import Task, Trajectory


@dataclass
class ScoredGroup:
    """The episodes of one task under one policy (a GRPO group) and their rewards."""

    index: int  # the sample id: the n-th group started in this run
    trajectories: list[Trajectory]
    rewards: list[float]  # each trajectory's return (outcome plus per-turn rewards)
    task: Task | None = None
    reward_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def oldest_version(self) -> int:
        """The policy version of the group's oldest generated token."""
        return min((v for t in self.trajectories for v in t.versions if v >= 0), default=0)


@dataclass
class BufferStats:
    started: int = 0  # groups admitted to generation
    ready: int = 0  # scored, waiting for the learner
    trained: int = 0
    dropped_stale: int = 0
    filtered_uniform: int = 0  # groups with all-equal rewards, replaced by fresh ones
    abandoned: int = 0  # started but never finished (cancelled at the end of a run, or failed)
    staleness: list[int] = field(default_factory=list)  # of the groups of the last batch taken

    @property
    def in_flight(self) -> int:
        return (self.started - self.ready - self.trained - self.dropped_stale - self.filtered_uniform
                - self.abandoned)


class BufferFailed(RuntimeError):
    """Rollout failed; the learner's wait ends with the cause."""


class GroupBuffer:
    """Scored groups waiting for the learner, with staleness-bounded admission (see module doc)."""

    def __init__(self, groups_per_step: int, max_staleness: int, timeout_s: float, filter_uniform: bool = False,
                 max_refills: int = 0, version: int = 0, first_index: int = 0) -> None:
        if groups_per_step < 1 or max_staleness < 0:
            raise ValueError(f"groups_per_step={groups_per_step} must be >= 1, max_staleness={max_staleness} >= 0")
        self.groups_per_step = groups_per_step
        self.max_staleness = max_staleness
        self.timeout_s = timeout_s
        self.filter_uniform = filter_uniform
        self.max_refills = max_refills
        self._refills = 0  # groups filtered since the last take
        self.version = version  # the policy's version: a resumed run starts at its checkpoint's step
        self._start_version = version
        self._first_index = first_index  # a resumed run's sample ids go on from its checkpoint's
        self.stats = BufferStats()
        self._ready: list[ScoredGroup] = []
        self._filtered: list[ScoredGroup] = []  # filtered as uniform since the last take_filtered
        self._arrived: set[int] = set()  # sample ids put so far
        self._cond = asyncio.Condition()
        self._error: BaseException | None = None

    def _admissible(self) -> bool:
        # Dropped and abandoned groups give their slot back: a fresh group replaces each. Counted from
        # the version this buffer started at: a run resumed at step 30 has started no group yet, and
        # must not admit 31 steps' worth at once (the shortest episodes would win every batch).
        s = self.stats
        live = s.started - s.dropped_stale - s.filtered_uniform - s.abandoned
        return live < (self.version - self._start_version + self.max_staleness + 1) * self.groups_per_step

    async def admit(self) -> int:
        """Wait until a new group may start; returns its index (sample id)."""
        async with self._cond:
            await self._wait(self._admissible, "an admission slot (the learner to take a step)")
            index = self.next_index
            self.stats.started += 1
            return index

    @property
    def next_index(self) -> int:
        """The sample id the next admitted group gets (saved in checkpoints: ids stay unique across resumes)."""
        return self._first_index + self.stats.started

    async def put(self, group: ScoredGroup) -> None:
        if group.index in self._arrived:
            # A re-queued group must replace its lost run, never add to it: one sample id, one training.
            raise ValueError(f"group {group.index} arrived twice; a sample id is scored and trained at most once")
        self._arrived.add(group.index)
        async with self._cond:
            uniform = len(set(group.rewards)) <= 1
            if self.filter_uniform and uniform and self._refills < self.max_refills:
                self._refills += 1
                self.stats.filtered_uniform += 1  # frees its admission slot: a fresh group replaces it
                self._filtered.append(group)
            else:
                self._ready.append(group)
                self.stats.ready += 1
            self._cond.notify_all()

    def take_filtered(self) -> list[ScoredGroup]:
        """The groups filtered as uniform since the last call (not trained on, but played)."""
        filtered, self._filtered = self._filtered, []
        return filtered

    def abandon(self) -> None:
        """A started group will never arrive (cancelled at the end of a run, or failed). Synchronous, so
        that it can run while its task is being cancelled; its slot frees at the next wake-up."""
        self.stats.abandoned += 1

    async def fail(self, error: BaseException) -> None:
        """Rollout broke: every current and later wait raises BufferFailed from `error`."""
        async with self._cond:
            self._error = error
            self._cond.notify_all()

    async def take(self) -> list[ScoredGroup]:
        """The next batch: `groups_per_step` groups at most `max_staleness` versions old, oldest
        first, in sample-id order. Too-stale groups met on the way are dropped and counted."""

        def enough() -> bool:
            self._drop_stale()
            return len(self._ready) >= self.groups_per_step

        async with self._cond:
            await self._wait(enough, f"{self.groups_per_step} scored groups")
            self._ready.sort(key=lambda g: (g.oldest_version, g.index))
            batch, self._ready = self._ready[: self.groups_per_step], self._ready[self.groups_per_step:]
            batch.sort(key=lambda g: g.index)
            self.stats.ready -= len(batch)
            self.stats.trained += len(batch)
            self.stats.staleness = [self.version - g.oldest_version for g in batch]
            self._refills = 0
            return batch

    async def set_version(self, version: int) -> None:
        """The learner's policy is now `version` (the engines have it): admits the next groups."""
        async with self._cond:
            self.version = version
            self._cond.notify_all()

    def _drop_stale(self) -> None:
        fresh = [g for g in self._ready if self.version - g.oldest_version <= self.max_staleness]
        dropped = len(self._ready) - len(fresh)
        if dropped:
            self._ready = fresh
            self.stats.ready -= dropped
            self.stats.dropped_stale += dropped
            self._cond.notify_all()

    async def _wait(self, predicate, what: str) -> None:
        def done() -> bool:
            return self._error is not None or predicate()

        try:
            # asyncio.timeout, not wait_for: wait_for runs the wait as a separate task, and cancelling
            # that (the rollout side is cancelled at the end of a run) hung on re-acquiring the lock.
            async with asyncio.timeout(self.timeout_s):
                await self._cond.wait_for(done)
        except TimeoutError:
            s = self.stats
            raise TimeoutError(f"waited {self.timeout_s:.0f} s for {what} at version {self.version} "
                               f"({s.ready} ready, {s.in_flight} in flight, {s.trained} trained, "
                               f"{s.dropped_stale} dropped as stale); raise train.wait_timeout_s if "
                               "rollouts or learner steps are this slow") from None
        if self._error is not None:
            raise BufferFailed(f"rollout failed: {self._error!r}") from self._error
