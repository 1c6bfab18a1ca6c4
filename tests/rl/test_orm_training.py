"""Tests for rl/orm_training.py: an ORM trained on a trajectory store learns what the verifier saw."""

import json
from pathlib import Path

import pytest

from rl.config import load_config
from rl.orm_training import eval_orm, train_orm
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


def test_orm_training_refuses_stores_without_the_label(tiny_model_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    TrajectoryStore(path, resume_step=10**9).write([{"source": "train", "step": 1, "task": {"id": "a",
                                                     "instruction": "?"}, "turns": [], "text": ""}])
    cfg = load_config([f"model.path={tiny_model_dir}", f"orm.data=[{path}]", "orm.label_key=judged"])
    with pytest.raises(ValueError, match="orm.label_key='judged'"):
        train_orm(cfg.orm)
