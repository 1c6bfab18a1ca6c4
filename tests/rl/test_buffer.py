"""Tests for rl/buffer.py: the staleness bound, admission, accounting, deadlines."""

import asyncio
import random

import pytest

from rl.buffer import BufferFailed, GroupBuffer, ScoredGroup
from rollout.types import FinishReason, Trajectory


def group(index: int, versions: list[int], rewards: list[float] | None = None) -> ScoredGroup:
    traj = Trajectory(task_id="t", group_id=str(index), token_ids=[1] * (len(versions) + 1),
                      loss_mask=[0] + [1] * len(versions), logprobs=[0.0] * (len(versions) + 1),
                      versions=[-1] + versions, prompt_length=1, turns=[], finish_reason=FinishReason.DONE)
    return ScoredGroup(index, [traj], rewards or [0.0])


def test_oldest_version_ignores_context_tokens():
    assert group(0, [3, 3, 4]).oldest_version == 3


async def simulate(max_staleness: int, groups_per_step: int, steps: int, seed: int):
    """A random actor-learner run: each group's tokens are sampled from the version current when it
    starts until it ends (a weight update mid-episode moves later tokens to the new version); group
    durations are long-tailed, so late groups get overtaken. Returns the buffer and the batches."""
    rng = random.Random(seed)
    buffer = GroupBuffer(groups_per_step, max_staleness, timeout_s=30)
    batches = []

    async def one_group(index: int) -> None:
        try:
            versions = [buffer.version]
            for _ in range(rng.randint(1, 4)):  # turns
                await asyncio.sleep(rng.expovariate(1.0) * (20 if rng.random() < 0.1 else 1) * 1e-3)
                versions.append(buffer.version)
            await buffer.put(group(index, versions))
        except asyncio.CancelledError:  # as rl.sources.generate_groups does
            buffer.abandon()
            raise

    async def producer() -> None:
        running = set()
        try:
            while True:
                task = asyncio.create_task(one_group(await buffer.admit()))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    rollout = asyncio.create_task(producer())
    for step in range(steps):
        batch = await buffer.take()
        batches.append((step, batch))
        await asyncio.sleep(rng.random() * 2e-3)  # the learner step
        await buffer.set_version(step + 1)
    rollout.cancel()
    await asyncio.gather(rollout, return_exceptions=True)
    return buffer, batches


@pytest.mark.parametrize("max_staleness", [0, 1, 2, 4])
@pytest.mark.parametrize("seed", range(5))
def test_every_trained_group_is_within_the_staleness_bound_and_every_group_is_accounted_for(max_staleness, seed):
    buffer, batches = asyncio.run(simulate(max_staleness, groups_per_step=4, steps=25, seed=seed))
    trained = [g.index for _, batch in batches for g in batch]
    assert len(trained) == len(set(trained)) == 25 * 4  # none twice, every step full
    for step, batch in batches:
        assert all(step - g.oldest_version <= max_staleness for g in batch)
        assert [g.index for g in batch] == sorted(g.index for g in batch)
    s = buffer.stats
    assert s.trained == 100
    assert s.started == s.trained + s.dropped_stale + s.ready + s.abandoned + s.filtered_uniform  # none lost
    assert s.in_flight == 0
    if max_staleness == 0:
        assert s.dropped_stale == 0 and s.started == 100  # synchronous: exactly one step's groups per version


def test_synchronous_mode_admits_one_step_of_groups_per_version():
    async def run():
        buffer = GroupBuffer(groups_per_step=2, max_staleness=0, timeout_s=0.2)
        assert [await buffer.admit(), await buffer.admit()] == [0, 1]
        with pytest.raises(TimeoutError, match="admission slot"):
            await buffer.admit()  # the third must wait for the learner
        await buffer.set_version(1)
        assert await buffer.admit() == 2

    asyncio.run(run())


def test_a_resumed_buffer_admits_one_step_of_groups_not_every_step_since_the_start():
    async def run():
        # Resumed at step 30 of a run that had started 64 groups: sample ids go on from 64.
        buffer = GroupBuffer(groups_per_step=2, max_staleness=0, timeout_s=0.2, version=30, first_index=64)
        assert [await buffer.admit(), await buffer.admit()] == [64, 65]
        with pytest.raises(TimeoutError, match=r"admission slot .* at version 30"):
            await buffer.admit()
        await buffer.put(group(64, [30]))
        await buffer.put(group(65, [30]))
        assert buffer.stats.staleness == [] and [g.index for g in await buffer.take()] == [64, 65]
        assert buffer.stats.staleness == [0, 0]
        await buffer.set_version(31)
        assert await buffer.admit() == 66 and buffer.next_index == 67

    asyncio.run(run())


def test_a_group_that_became_too_stale_is_dropped_and_its_slot_returned():
    async def run():
        buffer = GroupBuffer(groups_per_step=1, max_staleness=1, timeout_s=0.2)
        for _ in range(2):
            await buffer.admit()
        await buffer.set_version(2)
        await buffer.put(group(0, [0, 2]))  # oldest token from version 0: 2 versions old
        await buffer.put(group(1, [1, 2]))
        batch = await buffer.take()
        assert [g.index for g in batch] == [1] and buffer.stats.dropped_stale == 1
        assert buffer.stats.staleness == [1]
        # 2 started, 1 dropped: admission counts the live ones against (2 + 1 + 1) * 1
        assert [await buffer.admit(), await buffer.admit()] == [2, 3]

    asyncio.run(run())


def test_waits_have_deadlines_that_name_what_they_waited_for_and_failures_propagate():
    async def run():
        buffer = GroupBuffer(groups_per_step=3, max_staleness=0, timeout_s=0.1)
        await buffer.admit()
        with pytest.raises(TimeoutError, match=r"3 scored groups.*1 in flight"):
            await buffer.take()
        waiter = asyncio.create_task(buffer.take())
        await asyncio.sleep(0)
        await buffer.fail(RuntimeError("engine died"))
        with pytest.raises(BufferFailed, match="engine died"):
            await waiter

    asyncio.run(run())


def test_uniform_groups_are_filtered_and_replaced_up_to_the_refill_cap():
    async def run():
        buffer = GroupBuffer(groups_per_step=2, max_staleness=0, timeout_s=0.2, filter_uniform=True, max_refills=2)
        for _ in range(2):
            await buffer.admit()
        await buffer.put(group(0, [0, 0], rewards=[1.0, 1.0]))  # uniform: filtered, slot returned
        assert buffer.stats.filtered_uniform == 1 and buffer.stats.ready == 0
        assert await buffer.admit() == 2  # the refill, still at version 0 (on-policy)
        await buffer.put(group(1, [0], rewards=[0.0, 1.0]))
        await buffer.put(group(2, [0], rewards=[0.0, 0.0]))  # second refill
        assert await buffer.admit() == 3
        await buffer.put(group(3, [0], rewards=[0.0, 0.0]))  # cap reached: accepted as it is
        assert [g.index for g in await buffer.take()] == [1, 3]
        assert buffer.stats.filtered_uniform == 2
        assert [g.index for g in buffer.take_filtered()] == [0, 2] and buffer.take_filtered() == []
        s = buffer.stats
        assert s.started == s.trained + s.filtered_uniform

    asyncio.run(run())


def test_a_sample_id_can_arrive_only_once():
    async def run():
        buffer = GroupBuffer(groups_per_step=2, max_staleness=0, timeout_s=0.2)
        index = await buffer.admit()
        await buffer.put(group(index, [0]))
        with pytest.raises(ValueError, match="group 0 arrived twice"):
            await buffer.put(group(index, [0]))

    asyncio.run(run())
