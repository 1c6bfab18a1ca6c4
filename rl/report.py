"""Plots: a training run's `report.png` (success and reward against step, with the SFT baseline
drawn in) and `turnrl orm eval`'s (the ORM's reliability diagram, and its accuracy and AUC by step)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training nodes have no display
import matplotlib.pyplot as plt  # noqa: E402


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in history if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def write_report(history: list[dict], success_sft: float, success_final: float, path: Path) -> None:
    fig, (ax_success, ax_reward) = plt.subplots(1, 2, figsize=(11, 4))
    steps, values = _series(history, "rollout/success_rate")
    ax_success.plot(steps, values, label="rollout success (sampled)", color="tab:blue", alpha=0.6)
    steps, values = _series(history, "eval/success")
    ax_success.plot(steps, values, "o-", label="held-out success (greedy)", color="tab:green")
    ax_success.axhline(success_sft, linestyle="--", color="tab:gray", label=f"SFT baseline {success_sft:.2f}")
    ax_success.set_title(f"success: SFT {success_sft:.2f} -> RL {success_final:.2f}")
    ax_success.set_xlabel("step")
    ax_success.set_ylim(-0.02, 1.02)
    ax_success.legend(loc="lower right", fontsize=8)

    steps, values = _series(history, "reward/mean")
    ax_reward.plot(steps, values, color="tab:orange", label="mean reward")
    ax_reward.set_title("reward")
    ax_reward.set_xlabel("step")
    ax_reward.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_orm_report(report: dict, path: Path) -> None:
    """From `rl.recipes.orm.eval_orm`'s report: is P(success) calibrated, and does the ORM beat
    always answering the majority outcome as the policy moves."""
    fig, (ax_cal, ax_step) = plt.subplots(1, 2, figsize=(11, 4))
    points = report["reliability"]
    ax_cal.plot([0, 1], [0, 1], linestyle="--", color="tab:gray", label="calibrated")
    ax_cal.plot([b["p_mean"] for b in points], [b["success_rate"] for b in points], "o-", color="tab:blue",
                label="ORM")
    for b in points:
        ax_cal.annotate(str(b["count"]), (b["p_mean"], b["success_rate"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax_cal.set_title(f"reliability (ECE {report['ece']:.3f}; episodes per bin)")
    ax_cal.set_xlabel("P(success)")
    ax_cal.set_ylabel("success rate (verifier)")
    ax_cal.set_xlim(-0.02, 1.02)
    ax_cal.set_ylim(-0.02, 1.02)
    ax_cal.legend(loc="upper left", fontsize=8)

    steps = sorted(report["by_step"], key=int)
    for key, style, label in (("accuracy", "o-", "accuracy"), ("majority_accuracy", "--", "majority rate"),
                              ("auc", "s-", "AUC")):
        ax_step.plot([int(s) for s in steps], [report["by_step"][s][key] for s in steps], style, label=label)
    ax_step.set_title(f"accuracy {report['accuracy']:.3f} (majority {report['majority_accuracy']:.3f}), "
                      f"AUC {report['auc']:.3f}")
    ax_step.set_xlabel("training step of the episodes")
    ax_step.set_ylim(-0.02, 1.02)
    ax_step.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
