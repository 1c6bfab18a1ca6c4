"""Paired comparisons of held-out evaluations for the seeded benchmarks: which tasks each arm
solved, read from the runs' trajectory stores, and McNemar's exact test over them."""

from __future__ import annotations

import math


def held_out_outcomes(records: list[dict], step: int) -> dict[str, bool]:
    """Task id -> success of the held-out evaluation at `step` in a run's trajectory records
    (`rollout.store.read_trajectories`; step 0 is the starting policy)."""
    return {r["task"]["id"]: bool(r["success"]) for r in records if r["source"] == "eval" and r["step"] == step}


def pooled_held_out_outcomes(records_by_seed: dict[int, list[dict]], step: int) -> dict[str, bool]:
    """"seed/task id" -> success of each seed's run at `step` (`held_out_outcomes`): repeated runs
    on the same held-out tasks, pooled so that two arms are compared over every (seed, task)."""
    return {f"{seed}/{task}": ok for seed, records in records_by_seed.items()
            for task, ok in held_out_outcomes(records, step).items()}


def compare_paired(a: dict[str, bool], b: dict[str, bool]) -> dict[str, float]:
    """Two evaluations on the same tasks, task by task: how many only `a` solved, how many only `b`,
    and McNemar's exact two-sided p-value (a binomial test at 1/2 of those two counts). Paired, a
    gain of a few points can be significant where the two success rates' standard errors overlap."""
    if a.keys() != b.keys():
        raise ValueError(f"paired evaluations need the same tasks ({len(a)} and {len(b)} tasks, "
                         f"{len(a.keys() ^ b.keys())} in only one)")
    only_a = sum(a[t] and not b[t] for t in a)
    only_b = sum(b[t] and not a[t] for t in a)
    n = only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0
    return {"tasks": len(a), "solved_only_by_a": only_a, "solved_only_by_b": only_b, "mcnemar_p": p}
