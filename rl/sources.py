"""The producers of scored groups: the rollout side of the training loop, run beside the learner.

`generate_groups` (`rollout.source=env`, the default) plays the built-in agent loop on the
environment's tasks. `ProxySource` (`rollout.source=proxy`) is for your own agent: it serves the
OpenAI-compatible endpoint of rollout/proxy.py on the engines of the rollout workers (so new
weights reach the endpoint after every step like normal rollouts), starts your agent if
`rollout.proxy.agent_command` is set, and turns the episodes the agent finishes into scored GRPO
groups for the buffer:

- an episode belongs to the group of its `X-Group-Id` (the task); `algo.group_size` episodes make
  a group, and later episodes with the same id start a new group;
- a group is admitted by the buffer when its first episode makes its first call, which waits while
  the buffer is full: `train.max_staleness` bounds the agent's episodes as it bounds built-in ones;
- a group's rewards are those the agent reported (the `reward.*` terms do not apply); it enters the
  buffer when all its episodes have finished. Expired episodes are left out; a group with fewer than
  two finished episodes is abandoned;
- an episode recorded as several segments (its prompt once stopped extending its tokens) gives
  each segment as a sample with the episode's reward.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rewards.base import Reward
from rl.buffer import GroupBuffer, ScoredGroup
from rl.config import ProxyConfig
from rollout.engines.base import SamplingConfig
from rollout.proxy import ProxyServer, ProxySettings
from rollout.proxy_episodes import FinishedEpisode
from rollout.types import Task
from rollout.worker import Rollout

log = logging.getLogger(__name__)


async def generate_groups(buffer: GroupBuffer, rollout: Rollout, reward: Reward, sampler, sampling: SamplingConfig,
                          group_size: int, seed: int, max_turns_at: Callable[[int], int | None]) -> None:
    """Start a group whenever the buffer admits one; each group's episodes run concurrently (up to
    `max_turns_at(policy version)` turns, a curriculum's turn cap) and, scored, go into the buffer.
    Runs until cancelled."""
    running: set[asyncio.Task] = set()

    async def one_group(index: int, task) -> None:
        try:
            group_sampling = replace(sampling, seed=seed * 1_000_003 + index * 4099)
            trajs = await rollout.run_episodes([task] * group_size, group_sampling, [str(index)] * group_size,
                                               max_turns_at(buffer.version))
            scored = await reward(task, trajs)  # overlaps other groups' generation
            await buffer.put(ScoredGroup(index, trajs, scored.assign(trajs), task, scored.metrics))
        except asyncio.CancelledError:
            buffer.abandon()
            raise
        except Exception as err:
            buffer.abandon()
            await buffer.fail(err)
            raise

    try:
        while True:
            index = await buffer.admit()
            group = asyncio.create_task(one_group(index, sampler.sample(1)[0]), name=f"group-{index}")
            running.add(group)
            group.add_done_callback(running.discard)
    except Exception as err:
        await buffer.fail(err)
        raise
    finally:
        for group in running:
            group.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class AgentExited(RuntimeError):
    """The agent started by `rollout.proxy.agent_command` stopped before the run ended."""


@dataclass
class _Group:
    index: int  # the buffer's sample id
    key: str  # X-Group-Id
    started: int = 0
    lost: int = 0  # episodes that expired
    episodes: list[FinishedEpisode] = field(default_factory=list)


class ProxyGroups:
    """Admits proxy episodes group by group and puts finished groups, scored, into the buffer."""

    def __init__(self, buffer: GroupBuffer, group_size: int) -> None:
        self.buffer = buffer
        self.group_size = group_size
        self._open: dict[str, _Group] = {}  # by key: the group new episodes of that key join
        self._of_episode: dict[str, _Group] = {}
        self._unfinished: dict[int, _Group] = {}  # admitted, not yet put
        self._admitting = asyncio.Lock()

    def _has_room(self, key: str) -> bool:
        return key in self._open and self._open[key].started < self.group_size

    async def admit(self, episode_id: str, key: str) -> None:
        """Before an episode's first generation: join its key's open group, or admit a new one."""
        if not self._has_room(key):
            async with self._admitting:
                if not self._has_room(key):
                    group = _Group(await self.buffer.admit(), key)
                    self._open[key] = self._unfinished[group.index] = group
        group = self._open[key]
        group.started += 1
        self._of_episode[episode_id] = group

    async def finished(self, episode: FinishedEpisode) -> None:
        group = self._of_episode.pop(episode.episode_id, None)
        if group is None:  # expired before its first generation
            return
        if episode.expired:
            group.lost += 1
        else:
            group.episodes.append(episode)
        if group.started < self.group_size or len(group.episodes) + group.lost < group.started:
            return
        del self._unfinished[group.index]
        if self._open.get(group.key) is group:
            del self._open[group.key]
        if len(group.episodes) < 2:
            log.warning("proxy group %s has %d finished episode(s); abandoned", group.key, len(group.episodes))
            self.buffer.abandon()
            return
        trajs, rewards = [], []
        for ep in group.episodes:
            for traj in ep.trajectories:
                traj.group_id = str(group.index)
                trajs.append(traj)
                rewards.append(ep.reward)
        task = Task(id=group.key, env="proxy", instruction="", params={})
        await self.buffer.put(ScoredGroup(group.index, trajs, rewards, task))

    def abandon_unfinished(self) -> None:
        """At the end of the run: groups admitted but not complete will never arrive."""
        for _ in self._unfinished:
            self.buffer.abandon()
        self._unfinished.clear()


class ProxySource:
    """The producer of `rollout.source=proxy`: `run()` beside the learner until cancelled."""

    def __init__(self, proxy: ProxyConfig, settings: ProxySettings, group_size: int, buffer: GroupBuffer,
                 rollout: Rollout, tokenizer) -> None:
        self.proxy, self.settings, self.group_size = proxy, settings, group_size
        self.buffer, self.rollout, self.tokenizer = buffer, rollout, tokenizer
        self.groups = ProxyGroups(buffer, group_size)
        self.server = None

    async def run(self) -> None:
        p = self.proxy
        self.server = ProxyServer(self.rollout.generate, self.tokenizer, self.settings, self.groups.admit,
                                  self.groups.finished)
        agent = None
        try:
            url = await self.server.start(p.host, p.port)
            if not p.agent_command:
                log.info("waiting for your agent: OPENAI_BASE_URL=%s, model %s", url, p.model_name)
                await asyncio.Event().wait()  # until cancelled at the end of the run
                return
            agent = await asyncio.create_subprocess_shell(p.agent_command, start_new_session=True, env={
                **os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "turnrl", "OPENAI_MODEL": p.model_name,
                "TURNRL_GROUP_SIZE": str(self.group_size)})
            log.info("started the agent (pid %d): %s", agent.pid, p.agent_command)
            code = await agent.wait()
            raise AgentExited(f"rollout.proxy.agent_command exited with code {code} after "
                              f"{self.server.stats.episodes_finished} finished episodes; the agent must keep playing "
                              "until the trainer stops it")
        except Exception as err:
            await self.buffer.fail(err)
            raise
        finally:
            if agent is not None and agent.returncode is None:
                await _stop(agent)
            await self.server.stop()
            self.groups.abandon_unfinished()

    def metrics(self) -> dict[str, float]:
        """proxy/ counters so far (calls, episodes, segment splits, refused requests)."""
        if self.server is None:
            return {}
        s = self.server.stats
        return {"proxy/calls": s.calls, "proxy/episodes_finished": s.episodes_finished,
                "proxy/episodes_expired": s.episodes_expired, "proxy/segments_split": s.segments_split,
                "proxy/rejected_requests": s.rejected_requests}


async def _stop(agent: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM the agent's process group, SIGKILL it after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(agent.pid, sig)
        except ProcessLookupError:
            return
        try:
            async with asyncio.timeout(grace_s):
                await agent.wait()
            return
        except TimeoutError:
            log.warning("the agent (pid %d) did not stop on %s", agent.pid, sig.name)
