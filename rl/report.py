"""`report.png`: training success and reward against step, with the SFT baseline drawn in."""

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
