"""rollout.source=proxy: an agent written with the `openai` client trains the policy end to end."""

import json
import sys
from pathlib import Path

from rl.config import load_config
from rl.recipes.train import train

AGENT = Path(__file__).resolve().parents[3] / "examples" / "openai_agent.py"


def test_openai_agent_started_by_the_trainer_trains_the_policy_through_the_proxy(tiny_model_dir, tmp_path,
                                                                                 ray_local):
    agent = f"{sys.executable} {AGENT} --max-turns 2 --concurrent-groups 2"
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "rollout.source=proxy",
                       f"rollout.proxy.agent_command='{agent}'", "rollout.max_tokens_per_turn=16",
                       "env.eval_tasks_per_difficulty=1", f"train.out_dir={tmp_path}/run"])
    summary = train(cfg)
    groups = summary["rollout/groups"]
    assert summary["train/steps"] == 2 and groups["trained"] == 2 * cfg.algo.tasks_per_step
    assert groups["started"] == sum(groups[k] for k in ("trained", "dropped_stale", "filtered_uniform", "abandoned",
                                                       "ready_at_end"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 2 and steps[-1]["train/optimizer_steps"] == 2
    assert all(r["proxy/calls"] > 0 and r["proxy/episodes_finished"] >= 4 and r["proxy/rejected_requests"] == 0
               for r in steps)
    assert steps[0]["rollout/gen_tokens"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["source"] == "train"]
    assert len(trained) >= 2 * cfg.algo.tasks_per_step * cfg.algo.group_size
    assert all(r["task"]["env"] == "proxy" and r["task"]["id"].startswith("kbsearch-") for r in trained)
    # Synchronous training: step 2's episodes ran on the weights of step 1, pushed into the proxy's engine.
    assert {(r["version_min"], r["version_max"]) for r in trained if r["step"] == 2} == {(1, 1)}
    assert {(r["version_min"], r["version_max"]) for r in trained if r["step"] == 1} == {(0, 0)}


def test_proxy_groups_admit_by_group_id_and_leave_out_expired_episodes():
    import asyncio

    from rl.buffer import GroupBuffer
    from rl.sources import ProxyGroups
    from rollout.proxy_episodes import FinishedEpisode
    from rollout.types import FinishReason, Trajectory

    def episode(eid, key, reward, segments=1):
        trajs = [Trajectory(key, key, [1, 2], [0, 1], [0.0, -1.0], [-1, 0], 1, [], FinishReason.DONE)
                 for _ in range(segments)]
        return FinishedEpisode(eid, key, trajs, reward, reward > 0)

    async def main():
        buffer = GroupBuffer(groups_per_step=2, max_staleness=0, timeout_s=5)
        groups = ProxyGroups(buffer, group_size=2)
        for eid, key in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")]:
            await groups.admit(eid, key)
        assert buffer.stats.started == 2  # one group per id, two episodes each
        await groups.finished(episode("a1", "A", 1.0, segments=2))
        await groups.finished(episode("a2", "A", 0.0))
        await groups.finished(episode("b1", "B", 1.0))
        await groups.finished(FinishedEpisode("b2", "B", [], expired=True))  # B has one episode left: abandoned
        assert buffer.stats.ready == 1 and buffer.stats.abandoned == 1
        (group,) = buffer._ready
        # A split episode gives each segment as a sample with its reward, under the group's sample id.
        assert group.rewards == [1.0, 1.0, 0.0] and {t.group_id for t in group.trajectories} == {str(group.index)}
        await groups.admit("a3", "A")  # A's first group is full: a new one, in the slot B gave back
        assert buffer.stats.started == 3
        groups.abandon_unfinished()
        assert buffer.stats.abandoned == 2

    asyncio.run(main())
