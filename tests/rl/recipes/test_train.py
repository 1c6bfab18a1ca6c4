"""Tests for rl/recipes/train.py in-process with the HF engine: the algorithm options reach the learner."""

import json

from curricula.pool import TaskPool
from rl.config import load_config
from rl.recipes.train import train


def test_rloo_with_sequence_tis_and_mini_batches_runs_and_logs_its_metrics(tiny_model_dir, tmp_path, ray_local):
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "algo=rloo",
                       "algo.importance_weights=sequence", "algo.mini_batches=2", "algo.loss_agg=seq-mean-token-mean",
                       "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1",
                       f"train.out_dir={tmp_path}/run"])
    summary = train(cfg)
    assert summary["train/steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["train/optimizer_steps"] for r in steps] == [2, 4]
    # The proximal policy is the learner's own: behaviour log-probs from the HF engine with the same
    # weights make the truncated sequence weights ~1 (float noise only).
    assert all(abs(r["train/is_weight_mean"] - 1.0) < 1e-2 for r in steps)


def test_asynchronous_run_keeps_staleness_bounded_and_accounts_for_every_group(tiny_model_dir, tmp_path, ray_local):
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "train.steps=4",
                       "train.max_staleness=2", "algo.importance_weights=token", "rollout.max_tokens_per_turn=16",
                       "env.eval_tasks_per_difficulty=1", f"train.out_dir={tmp_path}/run"])
    summary = train(cfg)
    groups = summary["rollout/groups"]
    assert groups["trained"] == 4 * cfg.algo.tasks_per_step
    assert groups["started"] == groups["trained"] + groups["dropped_stale"] + groups["abandoned"] + groups[
        "ready_at_end"]
    # Generation ran ahead of the learner: more groups were started than trained.
    assert groups["started"] > groups["trained"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 4 and all(r["rollout/staleness_max"] <= 2 for r in steps)
    # Decoupled PPO: the first update's ratio is to the proximal policy, exactly 1 whatever the lag.
    assert all(abs(r["train/ratio_mean"] - 1.0) < 1e-6 for r in steps)


def test_ppo_with_a_critic_trains_policy_and_value_model(tiny_model_dir, tmp_path, ray_local):
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "algo=ppo",
                       "algo.tasks_per_step=4", "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1",
                       f"train.out_dir={tmp_path}/run"])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 2 and all("train/value_loss" in r and "train/value_mean" in r for r in steps)


def test_uniform_groups_are_refilled_up_to_the_cap_and_accounted_for(tiny_model_dir, tmp_path, ray_local):
    # A random policy fails every task: every group is uniform, so each step filters (and replaces)
    # max_refill_factor x tasks_per_step groups, then trains on what comes next.
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}",
                       "algo.drop_uniform_groups=true", "algo.refill_uniform_groups=true", "algo.max_refill_factor=1",
                       "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1",
                       "curriculum.enabled=true", "curriculum.initial_tasks=6", "curriculum.generate_every=0",
                       f"train.out_dir={tmp_path}/run"])
    groups = train(cfg)["rollout/groups"]
    assert groups["filtered_uniform"] == 2 * cfg.algo.tasks_per_step  # two steps, cap reached in each
    assert groups["started"] == sum(groups[k] for k in ("trained", "dropped_stale", "filtered_uniform", "abandoned",
                                                       "ready_at_end"))
    # The task pool's statistics count the filtered groups' episodes too: the curriculum must learn
    # that these tasks are always failed, though the learner never sees them.
    # (A group filtered after the last step's bookkeeping is counted in the stats only.)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout/played_success_rate"] for r in rows if "rollout/success_rate" in r] == [0.0, 0.0]
    attempts = sum(t.attempts for t in TaskPool(tmp_path / "run" / "tasks.sqlite").all())
    size = cfg.algo.group_size
    assert groups["trained"] * size < attempts <= (groups["trained"] + groups["filtered_uniform"]) * size


def test_curriculum_run_grows_its_pool_caps_turns_and_resumes_with_the_pool(tiny_model_dir, tmp_path, ray_local):
    common = ["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "rollout.max_tokens_per_turn=16",
              "env.eval_tasks_per_difficulty=1", f"train.out_dir={tmp_path}/run", "curriculum.enabled=true",
              "curriculum.initial_tasks=6", "curriculum.generate_every=1", "curriculum.turn_caps=[1,2]",
              "curriculum.turn_cap_every=2", "rollout.max_turns=4", "replay.ratio=1.0",
              "replay.reflection_splices=true",
              # Pilot rollouts through the workers; the band lets in even tasks the random policy never solves.
              "curriculum.pilot_rollouts=2", "curriculum.difficulty_band=[0.0,1.0]"]
    summary = train(load_config([*common, "train.steps=3"]))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["curriculum/turn_cap"] for r in steps] == [1.0, 1.0, 2.0]  # caps of steps 1..3 (0-based 1, 2)
    # Replay is on: the random policy succeeds nowhere, so the buffer stays empty, but it is kept.
    assert [r["replay/size"] for r in steps] == [0.0, 0.0, 0.0]
    assert [r["replay/reflection_splices"] for r in steps] == [0.0, 0.0, 0.0]  # no success to splice onto
    sizes = [r["curriculum/pool_size"] for r in steps]
    assert sizes[0] >= 6 and sizes == sorted(sizes) and summary["curriculum"]["accepted"] > 0
    assert summary["curriculum"]["pilot_episodes"] == 2 * (summary["curriculum"]["generated"] -
                                                           summary["curriculum"].get("rejected_duplicate", 0) -
                                                           summary["curriculum"].get("rejected_infeasible", 0))
    records = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    # Groups started at policy version v ran under the cap of step v (1 turn for v < 2).
    assert all(len(r["turns"]) <= 2 for r in records if r["source"] == "train")
    assert all(len(r["turns"]) <= 1 for r in records if r["source"] == "train" and r["step"] <= 2)
    from curricula.pool import TaskPool

    saved = TaskPool(tmp_path / "run" / "checkpoints" / "step_3" / "tasks.sqlite")
    assert len(saved) == summary["curriculum"]["pool_size"]
    generated = [t for t in saved.all() if t.task.origin == "procedural"]
    assert generated and all(saved.lineage(t.task.id)[0].depth == 0 for t in generated)  # lineage complete
    resumed = train(load_config([*common, "train.steps=4", "train.resume=auto"]))
    assert resumed["curriculum"]["pool_size"] >= summary["curriculum"]["pool_size"]


def test_overwrite_or_resume_auto_without_a_checkpoint_clear_the_earlier_runs_files(tmp_path):
    from rl.recipes.train import _check_start

    for flag in ("train.overwrite=true", "train.resume=auto"):
        out = tmp_path / flag.split("=")[0]
        (out / "checkpoints" / ".tmp-step_1").mkdir(parents=True)
        for name in ("metrics.jsonl", "summary.json", "train.log"):
            (out / name).write_text("{}\n")
        assert _check_start(load_config([f"train.out_dir={out}", flag]), None) is None
        assert sorted(p.name for p in out.iterdir()) == ["train.log"]  # this run's log is already open
