import pytest

from rl.cli import main
from rl.config import ConfigError, load_config


def test_default_config_is_the_embedded_cpu_run():
    cfg = load_config()
    assert cfg.env.name == "kbsearch" and cfg.rollout.engine == "vllm" and cfg.model.dtype == "float32"
    assert "${" not in cfg.model.path  # interpolations resolved


def test_overrides_and_groups_apply():
    cfg = load_config(["algo.lr=1e-5", "env=craft", "rollout=hf", "+experiment=smoke"])
    assert cfg.algo.lr == 1e-5 and cfg.env.name == "craft" and cfg.rollout.engine == "hf"
    assert cfg.train.steps == 2


@pytest.mark.parametrize("group, name, loss_agg", [("grpo", "grpo", "token-mean"), ("rloo", "rloo", "token-mean"),
                                                   ("reinforce_pp", "reinforce_pp", "token-mean"),
                                                   ("dr_grpo", "dr_grpo", "seq-mean-token-sum-norm")])
def test_algo_groups_select_estimator_and_loss_aggregation(group, name, loss_agg):
    cfg = load_config([f"algo={group}"])
    assert (cfg.algo.name, cfg.algo.loss_agg) == (name, loss_agg)


@pytest.mark.parametrize(
    "override, names",
    [
        ("algo.bogus=1", "bogus"),
        ("bogus_top_level=1", "bogus_top_level"),
        ("algo.lr=fast", "algo.lr"),
        ("rollout.max_turns=many", "rollout.max_turns"),
        ("env.name=nowhere", "nowhere"),
        ("env.modules=[no_such_turnrl_module]", "env.modules: cannot import 'no_such_turnrl_module'"),
        ("rollout.tool_threads=0", "rollout.tool_threads"),
        ("rollout.tool_timeout_s=0", "rollout.tool_timeout_s"),
        ("rollout.env_start_timeout_s=-1", "rollout.env_start_timeout_s"),
        ("rollout.max_observation_chars=0", "rollout.max_observation_chars"),
        ("model.corpus_episodes=0", "model.corpus_episodes"),
        ("rollout.engine=sglang", "rollout.engine"),
        ("algo.group_size=1", "algo.group_size"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("algo.mini_batches=0", "algo.mini_batches"),
        ("algo.mini_batches=65", "algo.mini_batches"),
        ("algo.name=ppo2", "algo.name"),
        ("algo.loss_agg=sum", "algo.loss_agg"),
        ("algo.importance_weights=tokens", "algo.importance_weights"),
        ("algo.is_cap=0.5", "algo.is_cap"),
        ("algo.refill_uniform_groups=true", "algo.refill_uniform_groups"),
        ("train.max_staleness=-1", "train.max_staleness"),
        ("rollout.weight_sync=nccl", "rollout.weight_sync"),
        ("rollout.num_workers=0", "rollout.num_workers"),
        ("train.learner_ranks=0", "train.learner_ranks"),
        ("algo.micro_batch_tokens=-1", "algo.micro_batch_tokens"),
        ("reward.verifier=0", "every reward term has weight 0"),
        ("reward.judge=1", "judge.base_url"),
        ("judge.on_unparseable=guess", "judge.on_unparseable"),
        ("orm.input=xml", "orm.input"),
        ("replay.reflection_splices=true", "replay.reflection_splices"),  # without replay.ratio > 0
        ("model.dtype=fp8", "model.dtype"),
        ("algo.zero_stage=4", "algo.zero_stage"),
        ("replay.min_confidence=2", "replay.min_confidence"),
        ("curriculum.proposer.examples=0", "curriculum.proposer.examples"),
        ("judge.samples=0", "judge.samples"),
    ],
)
def test_bad_keys_and_values_fail_naming_the_key(override, names):
    with pytest.raises(ConfigError, match=names):
        load_config([override])


def test_cli_stops_at_start_up_on_a_bad_key(capsys):
    with pytest.raises(SystemExit, match="algo.nope"):
        main(["train", "algo.nope=3"])


def test_help_lists_every_config_group_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "env=craft|kbsearch|twx" in out and "rollout=hf|vllm" in out and "+experiment=" in out


def test_cli_prints_the_resolved_config(capsys):
    main(["train", "--print-config", "algo.lr=0.123"])
    assert "lr: 0.123" in capsys.readouterr().out


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path))
    assert load_config().model.path == f"{tmp_path}/models/tiny-sft"


def test_more_than_one_rollout_worker_or_learner_rank_needs_ray():
    with pytest.raises(ConfigError, match="rollout.num_workers=2 needs ray.enabled=true"):
        load_config(["rollout.num_workers=2", "ray.enabled=false"])
    with pytest.raises(ConfigError, match="train.learner_ranks=2"):
        load_config(["train.learner_ranks=2", "ray.enabled=false"])


def test_every_reward_weight_has_a_builder():
    from rl.build import REWARD_TERM_BUILDERS
    from rl.config import REWARD_TERMS

    assert set(REWARD_TERMS) == set(REWARD_TERM_BUILDERS)


def test_a_settings_class_message_names_its_fields_as_config_keys_and_leaves_values_alone():
    """Each section's own check() speaks of its fields; the config prefixes them with the section,
    and only them (a value that looks like `name=` stays as it was)."""
    with pytest.raises(ConfigError) as err:
        load_config(["algo.loss_agg='lr=1'"])
    assert str(err.value).startswith("algo.loss_agg='lr=1' must be one of")
