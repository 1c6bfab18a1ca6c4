from rewards.outcome import outcome_rewards
from rollout.types import FinishReason, Trajectory


def _traj(success: bool) -> Trajectory:
    return Trajectory(task_id="t", group_id="g", token_ids=[1], loss_mask=[0], logprobs=[0.0], versions=[-1],
                      prompt_length=1, turns=[], finish_reason=FinishReason.DONE, success=success)


def test_outcome_reward_follows_the_verifier():
    trajs = [_traj(True), _traj(False)]
    assert outcome_rewards(trajs) == [1.0, 0.0]
    assert [t.reward for t in trajs] == [1.0, 0.0]
    assert outcome_rewards([_traj(False)], failure_reward=-1.0) == [-1.0]
