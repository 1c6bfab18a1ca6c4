"""Tests for rollout/store.py: records, resume without duplicates, torn last lines."""

import json

import pytest

from rollout.store import TrajectoryStore, read_trajectories, trajectory_record
from rollout.types import FinishReason, Task, Trajectory, Turn


def test_record_keeps_tokens_and_splits_text_into_actions_and_observations(tiny_tokenizer):
    prompt = tiny_tokenizer.encode("find the city")
    action = tiny_tokenizer.encode("search(Paris)")
    obs = tiny_tokenizer.encode("Paris is a city")
    ids = prompt + action + obs
    turn = Turn(action_start=len(prompt), action_end=len(prompt) + len(action), observation_end=len(ids))
    traj = Trajectory(task_id="t1", group_id="3", token_ids=ids, loss_mask=[0] * len(prompt) + [1] * len(action)
                      + [0] * len(obs), logprobs=[0.0] * len(ids),
                      versions=[-1] * len(prompt) + [2] * len(action) + [-1] * len(obs), prompt_length=len(prompt),
                      turns=[turn], finish_reason=FinishReason.DONE, success=True, reward=1.0)
    task = Task(id="t1", env="kbsearch", difficulty=1, instruction="find the city", params={"seed": 1})
    record = trajectory_record(traj, task, tiny_tokenizer, step=5, source="train")
    assert record["token_ids"] == ids and record["version_min"] == record["version_max"] == 2
    assert record["turns"][0]["action"].strip() == "search(Paris)"
    assert record["turns"][0]["observation"].strip() == "Paris is a city"
    assert record["task"]["instruction"] == "find the city" and record["success"] and record["step"] == 5


def test_resume_drops_records_after_the_checkpoint_and_a_fresh_run_starts_empty(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    TrajectoryStore(path).write({"step": s, "source": "train"} for s in (1, 2, 3, 4))
    TrajectoryStore(path, resume_step=2).write([{"step": 3, "source": "train"}])
    assert [r["step"] for r in read_trajectories([path])] == [1, 2, 3]
    TrajectoryStore(path)  # a fresh run of the same out_dir
    assert not path.exists()


def test_a_torn_last_line_is_skipped_but_a_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "tex')
    assert [r["step"] for r in read_trajectories([path])] == [1]
    path.write_text('{"st\n' + json.dumps({"step": 1}) + "\n")
    with pytest.raises(ValueError, match="t.jsonl:1"):
        list(read_trajectories([path]))


def test_a_torn_last_line_is_repaired_on_resume_and_named(tmp_path, caplog):
    import json

    from rollout.store import TrajectoryStore

    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "tas')
    TrajectoryStore(path, resume_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert f"{path}: dropped its torn last line (line 3" in caplog.text


def test_a_bad_line_inside_a_store_is_refused_with_its_file_and_line(tmp_path):
    import json

    import pytest

    from rollout.store import CorruptFileError, TrajectoryStore

    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + "garbage\n" + json.dumps({"step": 2}) + "\n")
    with pytest.raises(CorruptFileError, match=r"trajectories\.jsonl:2 is not a JSON record"):
        TrajectoryStore(path, resume_step=2)
