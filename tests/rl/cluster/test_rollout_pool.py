"""Tests for rl/cluster/rollout_pool.py: rollout workers as Ray actors with the HF engine on CPU."""

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import torch

from curricula.tasks import heldout_tasks
from rl.build import make_rollout_worker, start_rollout
from rl.config import load_config
from rl.evaluate import evaluate
from rl.recipes.train import train
from rollout.engines.base import SamplingConfig


def _cfg(model_dir, tmp_path, *overrides):
    return load_config(["+experiment=smoke", "rollout=hf", f"model.path={model_dir}", "rollout.max_tokens_per_turn=16",
                        "env.eval_tasks_per_difficulty=1", f"train.out_dir={tmp_path}/run", *overrides])


def _perturbed(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    return {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}


def test_both_weight_sync_backends_load_exactly_the_learners_weights(tiny_model_dir, tmp_path, ray_local):
    """After a sync, greedy episodes on every worker equal those of an in-process engine given the
    same weights (and differ from the unsynced policy's), for the object store and the broadcast."""
    state = _perturbed(tiny_model_dir)
    tasks = heldout_tasks("kbsearch", [1, 2], 3, 10_000_000)

    async def episodes(backend: str | None):
        cfg = _cfg(tiny_model_dir, tmp_path, "rollout.num_workers=2", "rollout.weight_sync_bucket_mb=1",
                   f"rollout.weight_sync={backend or 'object_store'}")
        rollout = make_rollout_worker(cfg) if backend is None else await start_rollout(cfg)
        try:
            await rollout.update_weights(state, version=3)
            _, trajs = await evaluate(rollout, tasks, slice_size=2)  # slices land on both workers
            stats = rollout.stats()
        finally:
            await rollout.shutdown()
        return [t.token_ids for t in trajs], stats

    expected, _ = asyncio.run(episodes(None))
    for backend in ("object_store", "broadcast"):
        got, stats = asyncio.run(episodes(backend))
        assert got == expected, backend
        assert [w.version for w in stats.workers] == [3, 3]
        assert len({w.pid for w in stats.workers}) == 2


def test_trajectories_carry_non_decreasing_versions_across_in_flight_updates(tiny_model_dir, tmp_path, ray_local):
    cfg = _cfg(tiny_model_dir, tmp_path, "rollout.num_workers=2", "rollout.max_turns=6",
               "rollout.max_consecutive_errors=6")
    tasks = heldout_tasks("kbsearch", [3], 16, 10_000_000)
    state = _perturbed(tiny_model_dir)

    async def run():
        pool = await start_rollout(cfg)
        try:
            halves = [asyncio.create_task(pool.run_episodes(half, SamplingConfig(temperature=1.0, seed=0)))
                      for half in (tasks[:8], tasks[8:])]
            version = 0
            while not all(h.done() for h in halves):  # new weights while the episodes run
                version += 1
                await pool.update_weights(state, version)
            return [t for h in halves for t in await h], version
        finally:
            await pool.shutdown()

    trajs, last_version = asyncio.run(run())
    assert last_version > 1
    for traj in trajs:
        versions = [v for v in traj.versions if v >= 0]
        assert versions == sorted(versions)
    assert max(v for t in trajs for v in t.versions) > 0  # some tokens came after an update


def kill_after_first_step(metrics: Path, process_marker: str) -> tuple[threading.Thread, list[int]]:
    """A started thread that SIGKILLs the processes whose command line holds `process_marker` (Ray
    names actor processes after their class) once the run has logged its first step; and the pids
    it killed."""
    killed: list[int] = []

    def kill() -> None:
        deadline = time.monotonic() + 600
        while not (metrics.exists() and '"train/loss"' in metrics.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in psutil.Process().children(recursive=True):
            try:
                if process_marker in " ".join(proc.cmdline()):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            except psutil.NoSuchProcess:
                pass

    thread = threading.Thread(target=kill)
    thread.start()
    return thread, killed


def test_a_killed_rollout_worker_is_replaced_and_the_run_completes_with_every_group_accounted(
        tiny_model_dir, tmp_path, ray_local):
    cfg = _cfg(tiny_model_dir, tmp_path, "rollout.num_workers=2", "train.steps=6", "train.max_staleness=1",
               "algo.importance_weights=token")
    metrics = tmp_path / "run" / "metrics.jsonl"
    killer, killed = kill_after_first_step(metrics, "RolloutActor")
    summary = train(cfg)
    killer.join()
    assert killed, "no rollout worker process was found to kill"
    workers = summary["rollout/workers"]
    assert workers["worker_restarts"] == 1 and workers["count"] == 2
    assert killed[0] not in [w["pid"] for w in workers["placement"]]
    groups = summary["rollout/groups"]
    assert groups["trained"] == 6 * cfg.algo.tasks_per_step
    assert groups["started"] == sum(groups[k] for k in ("trained", "dropped_stale", "filtered_uniform", "abandoned",
                                                       "ready_at_end"))
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if '"train/loss"' in line]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert steps[-1]["rollout/worker_restarts"] == 1


def test_an_orm_only_run_scores_in_a_reward_worker_that_is_replaced_when_killed(tiny_model_dir, tmp_path,
                                                                                   ray_local, synthetic_store):
    """reward.verifier=0 reward.orm=1: the ORM (served by a Ray reward worker) is the only reward; the
    worker is SIGKILLed after the first step and replaced; every episode lands in the trajectory store."""
    from rl.recipes.orm import train_orm

    store = synthetic_store(tmp_path / "store.jsonl", 64, seed=0, step=1)
    orm_cfg = load_config([f"model.path={tiny_model_dir}", f"orm.data=[{store}]", f"orm.path={tmp_path}/orm",
                           "orm.epochs=1", "orm.batch_size=16", "orm.eval_fraction=0"])
    train_orm(orm_cfg.orm)
    cfg = _cfg(tiny_model_dir, tmp_path, "reward.verifier=0", "reward.orm=1", f"orm.path={tmp_path}/orm",
               "orm.threshold=-1", "train.steps=4")
    metrics = tmp_path / "run" / "metrics.jsonl"
    killer, killed = kill_after_first_step(metrics, "RewardActor")
    summary = train(cfg)
    killer.join()
    assert killed, "no reward worker process was found to kill"
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if '"train/loss"' in line]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(0 < r["reward/orm/p_success"] < 1 and "reward/verifier/mean" not in r for r in steps)
    assert steps[-1]["reward/orm/worker_restarts"] == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["source"] == "train"]
    assert len(trained) == 4 * cfg.algo.tasks_per_step * cfg.algo.group_size
    assert {r["step"] for r in trained} == {1, 2, 3, 4}
    assert sum(r["source"] == "eval" for r in records) == 2 * summary["eval/num_tasks"]  # before and after
