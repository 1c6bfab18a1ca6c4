"""Bad input is refused at start-up in one line that names the key or the file, with a non-zero exit
and no traceback, before Ray, vLLM or DeepSpeed start: a table of bad values and damaged files, run
through the command line in this process as a user would type them."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from rl.cli import main

# (overrides of `turnrl train`, what the one-line message must contain)
BAD_CONFIG = [
    (["algo.bogus=1"], "bogus"),
    (["algo.lr=fast"], "algo.lr"),
    (["env.name=nowhere"], "env.name='nowhere'"),
    (["env.modules=[no_such_turnrl_module]"], "env.modules: cannot import 'no_such_turnrl_module'"),
    (["algo.group_size=1"], "algo.group_size=1"),
    (["rollout.temperature=0"], "rollout.temperature=0"),
    (["rollout.top_p=1.5"], "rollout.top_p=1.5 must be in (0, 1]"),
    (["rollout.top_p=0"], "rollout.top_p=0"),
    (["algo.lr=-1e-4"], "algo.lr=-0.0001 must be > 0"),
    (["algo.lr=0"], "algo.lr=0.0 must be > 0"),
    (["algo.clip_eps=-0.1"], "algo.clip_eps=-0.1"),
    (["algo.weight_decay=-1"], "algo.weight_decay=-1"),
    (["algo.kl_coef=-0.1"], "algo.kl_coef=-0.1"),
    (["algo.grad_clip=-1"], "algo.grad_clip=-1"),
    (["algo.micro_batch_size=0"], "algo.micro_batch_size=0 must be >= 1"),
    (["algo.mini_batches=0"], "algo.mini_batches=0"),
    (["algo.zero_stage=4"], "algo.zero_stage=4"),
    (["algo.is_cap=0.5"], "algo.is_cap=0.5"),
    (["train.save_every=0"], "train.save_every=0 must be >= 1"),
    (["train.save_every=-2"], "train.save_every=-2"),
    (["train.steps=0"], "train.steps=0"),
    (["train.max_staleness=-1"], "train.max_staleness=-1"),
    (["train.wait_timeout_s=0"], "train.wait_timeout_s=0"),
    (["rollout.max_tokens_per_turn=0"], "rollout.max_tokens_per_turn=0"),
    (["rollout.max_total_tokens=0"], "rollout.max_total_tokens=0"),
    (["rollout.max_turns=0"], "rollout.max_turns=0"),
    (["rollout.tool_threads=0"], "rollout.tool_threads=0"),
    (["rollout.tool_timeout_s=0"], "rollout.tool_timeout_s=0"),
    (["rollout.env_start_timeout_s=-1"], "rollout.env_start_timeout_s=-1"),
    (["rollout.max_observation_chars=0"], "rollout.max_observation_chars=0"),
    (["rollout.engine=sglang"], "rollout.engine='sglang'"),
    (["rollout.weight_sync=nccl"], "rollout.weight_sync='nccl'"),
    (["rollout.num_workers=0"], "rollout.num_workers=0"),
    (["env.eval_tasks_per_difficulty=-1"], "env.eval_tasks_per_difficulty=-1"),
    (["env.train_difficulties=[]"], "env.train_difficulties=[] must be a non-empty list"),
    (["env.eval_difficulties=[9]"], "env.eval_difficulties=[9]"),
    (["curriculum.enabled=true", "curriculum.band=[0.9,0.1]"], "band=[0.9, 0.1]"),
    (["reward.judge=1", "judge.base_url=http://127.0.0.1:9/v1", "judge.timeout_s=-1"], "judge.timeout_s=-1"),
    (["reward.judge=1", "judge.base_url=http://127.0.0.1:9/v1", "judge.retries=-1"], "judge.retries=-1"),
    (["reward.timeout_s=0"], "reward.timeout_s=0"),
    (["reward.max_failed_groups=-1"], "reward.max_failed_groups=-1"),
    (["reward.verifier=0"], "every reward term has weight 0"),
    (["model.dtype=fp8"], "model.dtype='fp8'"),
    (["model.corpus_episodes=0"], "model.corpus_episodes=0"),
    (["algo=ppo", "replay.ratio=0.5"], "replay.ratio > 0 needs a group-advantage estimator"),
]


def refused(argv: list[str], capsys) -> str:
    """The one-line message `turnrl argv` stops with (asserting a non-zero exit and no traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code not in (0, None)
    assert "Traceback" not in err, err
    message = stop.value.code if isinstance(stop.value.code, str) else err.strip().splitlines()[-1]
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize("overrides, expected", BAD_CONFIG, ids=[" ".join(o) for o, _ in BAD_CONFIG])
def test_a_bad_config_value_is_refused_in_one_line(overrides, expected, capsys):
    assert expected in refused(["train", *overrides], capsys)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "run"


def test_a_model_path_that_is_not_a_model_is_refused(tmp_path, run_dir, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"learning_rate": 3}')
    message = refused(["train", f"model.path={tmp_path / 'notes'}", f"train.out_dir={run_dir}"], capsys)
    assert "config.json names no model_type" in message and "notes" in message
    assert "no model at model.path=" in refused(["train", f"model.path={tmp_path / 'nowhere'}",
                                                 f"train.out_dir={run_dir}"], capsys)


def test_a_model_without_a_tokenizer_is_refused(tiny_model_dir, tmp_path, run_dir, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_model_dir / "config.json", bare / "config.json")
    assert "has no tokenizer" in refused(["train", f"model.path={bare}", f"train.out_dir={run_dir}"], capsys)


def test_an_out_dir_under_a_file_is_refused(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    message = refused(["train", f"model.path={tiny_model_dir}", f"train.out_dir={tmp_path / 'a_file' / 'run'}"],
                      capsys)
    assert "is not writable" in message and "a_file" in message


def test_a_fresh_run_into_an_out_dir_that_holds_a_run_is_refused(tiny_model_dir, run_dir, capsys):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "summary.json").write_text("{}\n")
    message = refused(["train", f"model.path={tiny_model_dir}", f"train.out_dir={run_dir}"], capsys)
    assert "holds a run (metrics.jsonl, summary.json)" in message
    assert "train.resume=auto" in message and "train.overwrite=true" in message
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing was touched


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir, tmp_path_factory):
    """A real checkpoint (step 3) of the tiny model, saved by the learner."""
    from rl.learner.checkpoint import save_checkpoint
    from rl.learner.learner import Learner, LearnerConfig

    root = tmp_path_factory.mktemp("saved") / "checkpoints"
    return save_checkpoint(root, Learner(str(tiny_model_dir), LearnerConfig(zero_stage=0)), 3)


def _resume(tiny_model_dir, run_dir, checkpoint, *more):
    return ["train", f"model.path={tiny_model_dir}", f"train.out_dir={run_dir}", f"train.resume={checkpoint}",
            "train.steps=5", *more]


def test_a_checkpoint_with_a_changed_byte_is_refused(tiny_model_dir, checkpoint, tmp_path, run_dir, capsys):
    damaged = shutil.copytree(checkpoint, tmp_path / "step_3")
    weights = damaged / "hf" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(random.Random(0).randrange(256) for _ in range(100))  # same size
    weights.write_bytes(bytes(data))
    message = refused(_resume(tiny_model_dir, run_dir, damaged), capsys)
    assert "is corrupt" in message and "hf/model.safetensors (its bytes changed" in message


def test_a_checkpoint_with_a_torn_meta_is_refused(tiny_model_dir, checkpoint, tmp_path, run_dir, capsys):
    torn = shutil.copytree(checkpoint, tmp_path / "step_3")
    (torn / "meta.json").write_text('{"step": 3, "wor')
    assert "meta.json is corrupt" in refused(_resume(tiny_model_dir, run_dir, torn), capsys)


def test_a_truncated_checkpoint_file_is_refused(tiny_model_dir, checkpoint, tmp_path, run_dir, capsys):
    cut = shutil.copytree(checkpoint, tmp_path / "step_3")
    rng = cut / "rng" / "rank_0.pt"
    rng.write_bytes(rng.read_bytes()[:10])
    assert "truncated or altered rng/rank_0.pt (10 bytes" in refused(_resume(tiny_model_dir, run_dir, cut), capsys)


def test_a_checkpoint_of_another_model_shape_is_refused(tiny_model_dir, checkpoint, tmp_path, run_dir, capsys):
    other = shutil.copytree(tiny_model_dir, tmp_path / "wider")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"hidden_size": 2 * config["hidden_size"]}))
    message = refused(_resume(other, run_dir, checkpoint), capsys)
    assert "another shape" in message and f"hidden_size {config['hidden_size']} vs" in message


def test_resuming_past_train_steps_is_refused(tiny_model_dir, checkpoint, run_dir, capsys):
    message = refused(_resume(tiny_model_dir, run_dir, checkpoint, "train.steps=2"), capsys)
    assert "train.steps=2 is below the step of the checkpoint to resume" in message and "step 3" in message


def test_resuming_from_nowhere_is_refused(tiny_model_dir, tmp_path, run_dir, capsys):
    assert "no complete checkpoint there" in refused(_resume(tiny_model_dir, run_dir, tmp_path / "nothing"), capsys)


def test_a_corrupt_task_pool_is_refused_naming_the_file_and_its_copies(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tasks.sqlite").write_bytes(b"not a database, " * 64)
    message = refused(["tasks", f"train.out_dir={run}"], capsys)
    assert f"{run / 'tasks.sqlite'} is not a readable task pool" in message and "checkpoints/step_N" in message


def test_a_store_with_a_broken_line_inside_is_refused_with_file_and_line(tiny_model_dir, tmp_path, capsys):
    store = tmp_path / "trajectories.jsonl"
    store.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    message = refused(["orm", "train", f"model.path={tiny_model_dir}", f"orm.data=[{store}]",
                       f"orm.path={tmp_path / 'orm'}"], capsys)
    assert f"{store}:2 is not a JSON record" in message


def test_a_torn_last_line_is_repaired_when_a_run_resumes_and_the_file_is_named(tmp_path, caplog):
    """What a kill mid-write leaves is not refused: the resumed run's store and metrics drop the
    torn line (saying which file) and keep exactly what the checkpoint counted."""
    from rl.metrics import MetricsSink
    from rollout.store import TrajectoryStore

    store = tmp_path / "trajectories.jsonl"
    store.write_text('{"step": 1, "group": "0"}\n{"step": 1, "group": "1"}\n{"step": 2, "gro')
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "x"')
    TrajectoryStore(store, resume_step=1, keep=2)
    MetricsSink(tmp_path, {}, "disabled", "p", "", resume_step=1, keep=2).close()
    assert store.read_text().count("\n") == 2 and metrics.read_text().count("\n") == 2
    assert f"{store}: dropped its torn last line" in caplog.text
    assert f"{metrics}: dropped its torn last line" in caplog.text
