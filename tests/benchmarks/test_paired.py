"""Tests for tests/benchmarks/paired.py: the paired comparison of two held-out evaluations."""

import pytest
from paired import compare_paired, held_out_outcomes, pooled_held_out_outcomes  # beside this test


def test_paired_comparison_against_hand_computed_mcnemar():
    # 5 tasks only a solved, 1 only b, 2 both, 2 neither: p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * 7/64
    a = {f"t{i}": i < 7 for i in range(10)}
    b = {f"t{i}": 5 <= i < 8 for i in range(10)}
    assert compare_paired(a, b) == {"tasks": 10, "solved_only_by_a": 5, "solved_only_by_b": 1,
                                    "mcnemar_p": pytest.approx(14 / 64)}
    assert compare_paired(a, a)["mcnemar_p"] == 1.0  # no discordant task: no evidence either way
    assert compare_paired({"t": True}, {"t": False})["mcnemar_p"] == 1.0  # 2 * P(X <= 0), X ~ Bin(1, 1/2)


def test_paired_comparison_needs_the_same_tasks():
    with pytest.raises(ValueError, match="same tasks"):
        compare_paired({"t1": True}, {"t2": True})


def test_held_out_outcomes_reads_one_evaluation_of_a_store():
    records = [{"source": "eval", "step": 0, "task": {"id": "a"}, "success": False},
               {"source": "train", "step": 3, "task": {"id": "a"}, "success": True},
               {"source": "eval", "step": 3, "task": {"id": "a"}, "success": True}]
    assert held_out_outcomes(records, 0) == {"a": False} and held_out_outcomes(records, 3) == {"a": True}


def test_pooled_outcomes_key_each_task_by_its_runs_seed():
    run = lambda ok: [{"source": "eval", "step": 2, "task": {"id": "a"}, "success": ok}]  # noqa: E731
    assert pooled_held_out_outcomes({0: run(True), 1: run(False)}, 2) == {"0/a": True, "1/a": False}
