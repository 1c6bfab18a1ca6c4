"""The verifiable outcome reward: the environment's own verifier decides success."""

from __future__ import annotations

from rollout.types import Trajectory


def outcome_rewards(trajectories: list[Trajectory], success_reward: float = 1.0,
                    failure_reward: float = 0.0) -> list[float]:
    """Set and return each trajectory's outcome reward from its verified success."""
    for traj in trajectories:
        traj.reward = success_reward if traj.success else failure_reward
    return [t.reward for t in trajectories]
