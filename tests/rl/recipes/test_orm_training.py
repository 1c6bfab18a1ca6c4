"""Tests for rl/recipes/orm.py: an ORM trained on a trajectory store learns what the verifier saw."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import load_config
from rl.recipes.orm import eval_orm, positive_weight, train_orm
from rollout.store import TrajectoryStore


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory, synthetic_store):
    root = tmp_path_factory.mktemp("orm")
    data = synthetic_store(root / "early.jsonl", 240, seed=0, step=1)
    later = synthetic_store(root / "later.jsonl", 80, seed=1, step=20)
    cfg = load_config([f"model.path={tiny_model_dir}", f"orm.data=[{data}]", f"orm.path={root}/orm",
                       "orm.epochs=4", "orm.lr=3e-3", "orm.batch_size=16"])
    return cfg, later, train_orm(cfg.orm)


def test_orm_learns_the_verifiers_outcome_on_held_out_tasks(trained):
    cfg, _, metrics = trained
    assert metrics["heldout_count"] > 20
    assert metrics["heldout_accuracy"] >= 0.9 and metrics["heldout_auc"] >= 0.95
    meta = json.loads((Path(cfg.orm.path) / "orm_meta.json").read_text())
    assert meta["input"] == "webrl" and meta["metrics"]["heldout_accuracy"] == metrics["heldout_accuracy"]


def test_orm_eval_reports_metrics_overall_and_by_step_on_a_later_policys_trajectories(trained):
    cfg, later, _ = trained
    cfg.orm.eval_data = [str(later)]
    report = eval_orm(cfg.orm)
    assert report["count"] == 80 and report["accuracy"] >= 0.9
    assert list(report["by_step"]) == [20]
    assert list(report["by_difficulty"]) == [1, 2] and report["by_difficulty"][1]["count"] == 40


def test_orm_eval_from_the_cli_draws_its_reliability_diagram(trained, tmp_path, capsys):
    from rl.cli import main

    cfg, later, _ = trained
    plot = tmp_path / "orm_eval.png"
    main(["orm", "eval", f"model.path={cfg.model.path}", f"orm.path={cfg.orm.path}", f"orm.eval_data=[{later}]",
          f"orm.eval_plot={plot}"])
    report = json.loads(capsys.readouterr().out)
    assert sum(b["count"] for b in report["reliability"]) == report["count"] == 80
    assert plot.stat().st_size > 1000


def test_balanced_classes_put_p_one_half_between_rare_successes_and_failures(tiny_model_dir, tmp_path,
                                                                             synthetic_store):
    data = synthetic_store(tmp_path / "early.jsonl", 320, seed=3, step=1, success_rate=0.05)
    later = synthetic_store(tmp_path / "later.jsonl", 100, seed=4, step=20)  # 40% successful, as a better policy
    metrics = {}
    for balance in (False, True):
        cfg = load_config([f"model.path={tiny_model_dir}", f"orm.data=[{data}]", f"orm.eval_data=[{later}]",
                           f"orm.path={tmp_path}/orm-{balance}", "orm.epochs=1", "orm.lr=1e-3", "orm.batch_size=16",
                           f"orm.balance_classes={balance}"])
        metrics[balance] = train_orm(cfg.orm)
    assert metrics[True]["train_base_rate"] < 0.1
    # Fitted to a 5% prior, the ORM calls every later episode a failure; balanced, it separates them.
    assert metrics[False]["heldout_accuracy"] == metrics[False]["heldout_majority_accuracy"]
    assert metrics[True]["heldout_accuracy"] >= 0.9
    with pytest.raises(ValueError, match="both outcomes"):
        positive_weight([False] * 10)
    assert positive_weight([True, False, False, False]) == 3


def test_orm_training_refuses_stores_without_the_label(tiny_model_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    TrajectoryStore(path, resume_step=10**9).write([{"source": "train", "step": 1, "task": {"id": "a",
                                                     "instruction": "?"}, "turns": [], "text": ""}])
    cfg = load_config([f"model.path={tiny_model_dir}", f"orm.data=[{path}]", "orm.label_key=judged"])
    with pytest.raises(ValueError, match="orm.label_key='judged'"):
        train_orm(cfg.orm)


@pytest.mark.slow
def test_orm_training_under_torchrun_with_two_ranks(tiny_model_dir, tmp_path, synthetic_store):
    data = synthetic_store(tmp_path / "data.jsonl", 240, seed=2, step=1)
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK"}}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "rl.cli", "orm",
         "train", f"model.path={tiny_model_dir}", f"orm.data=[{data}]", f"orm.path={tmp_path}/orm", "orm.epochs=4",
         "orm.lr=3e-3", "orm.batch_size=8"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads(proc.stdout)  # rank 0 reports; rank 1 prints nothing
    assert metrics["heldout_accuracy"] >= 0.9
    assert (tmp_path / "orm" / "config.json").exists()
