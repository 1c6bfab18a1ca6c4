"""`rollout.source=proxy`: the rollout side of the training loop when your own agent plays the episodes.

The trainer serves the OpenAI-compatible endpoint of rollout/proxy.py on the engines of its rollout
workers (the object `start_rollout(cfg)` made, so new weights reach the endpoint after every
step like normal rollouts), starts your agent if `rollout.proxy.agent_command` is set, and turns
the episodes the agent finishes into scored GRPO groups for the buffer:

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
from dataclasses import dataclass, field

from rl.buffer import GroupBuffer, ScoredGroup
from rl.config import TurnRLConfig
from rollout.proxy_episodes import FinishedEpisode
from rollout.types import Task

log = logging.getLogger(__name__)


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

    def __init__(self, cfg: TurnRLConfig, buffer: GroupBuffer, rollout, tokenizer) -> None:
        self.cfg, self.buffer, self.rollout, self.tokenizer = cfg, buffer, rollout, tokenizer
        self.groups = ProxyGroups(buffer, cfg.algo.group_size)
        self.server = None

    async def run(self) -> None:
        from rollout.proxy import ProxyServer, ProxySettings

        p, r = self.cfg.rollout.proxy, self.cfg.rollout
        settings = ProxySettings(model_name=p.model_name, temperature=r.temperature, top_p=r.top_p, lock_sampling=True,
                                 max_tokens_per_turn=r.max_tokens_per_turn, max_total_tokens=r.max_total_tokens,
                                 episode_timeout_s=p.episode_timeout_s)
        self.server = ProxyServer(self.rollout.generate, self.tokenizer, settings, self.groups.admit,
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
                "TURNRL_GROUP_SIZE": str(self.cfg.algo.group_size)})
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
