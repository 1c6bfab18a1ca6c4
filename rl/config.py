"""Typed configuration: Hydra structured configs whose defaults are the embedded CPU run.

The dataclasses below are the schema. `configs/` holds the YAML groups that fill it in;
`load_config` composes them with command-line overrides, and Hydra rejects any key that is not
in the schema, or a value of the wrong type, naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curricula.curriculum import CurriculumSettings
from curricula.replay import ReplaySettings
from rewards.judge import JudgeSettings
from rewards.orm import ORM_INPUTS
from rl.algo.advantages import ADVANTAGE_ESTIMATORS
from rl.errors import TurnRLError
from rl.learner.settings import DTYPES, LearnerSettings
from rollout.agent_loop import EpisodeLimits
from rollout.env import import_env_modules
from rollout.envs import get_env, registered_envs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class PretrainConfig:
    # Synthetic pretraining in `turnrl model init` (rl/recipes/pretrain.py): episodes of record
    # look-ups over random tool schemas, so the model can copy a value from its context before SFT.
    episodes: int = 0  # 0: none (a random-weight base)
    epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 16


@dataclass
class ModelConfig:
    # The policy to train: any HF causal-LM directory (the SFT output by default).
    path: str = "${cache_dir}/models/tiny-sft"
    # Where `turnrl model init` writes the random tiny model and `turnrl sft` reads it.
    base_path: str = "${cache_dir}/models/tiny-base"
    dtype: str = "float32"  # vLLM on CPU supports float32 only
    # Tiny-model shape for `turnrl model init`.
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 2
    seed: int = 0
    # Expert episodes per environment whose text the tokenizer is trained on (kbsearch, craft and
    # env.name's): fewer for a slow environment of one's own.
    corpus_episodes: int = 1500
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass
class EnvConfig:
    name: str = "kbsearch"
    # Modules that register environments of your own (`@register_env`): imported before env.name is
    # looked up, by the trainer and by every rollout worker (Ray ships them to its workers).
    modules: list[str] = field(default_factory=list)
    train_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    eval_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    eval_tasks_per_difficulty: int = 30
    # Held-out tasks use seeds from this offset on (eval_tasks_per_difficulty of them per difficulty);
    # training seeds are drawn below it, SFT's from 20,000,000 on.
    eval_seed_offset: int = 10_000_000


@dataclass
class VLLMConfig:
    max_model_len: int = 1024
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    tensor_parallel_size: int = 1


@dataclass
class ProxyConfig:
    # rollout.source=proxy (rl/sources.py, rollout/proxy.py): the trainer serves an OpenAI-compatible
    # endpoint at http://<host>:<port>/v1 and trains on the episodes your own agent plays through it.
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (logged, and passed to agent_command)
    model_name: str = "turnrl-policy"  # the `model` requests must name (GET /v1/models lists it)
    # A shell command the trainer starts once the endpoint is up, with OPENAI_BASE_URL, OPENAI_API_KEY,
    # OPENAI_MODEL and TURNRL_GROUP_SIZE set, and stops at the end of the run; "": start your agent yourself
    # (set port so that its URL is known).
    agent_command: str = ""
    # An episode with no call and no finish for this long is dropped; its group trains without it.
    episode_timeout_s: float = 600.0


@dataclass
class RolloutConfig(EpisodeLimits):
    # The limits of one episode (max_turns, max_tokens_per_turn, max_total_tokens, max_consecutive_errors,
    # tool_timeout_s, simulated_tool_latency_s, mask_error_turns) are the fields of EpisodeLimits
    # (rollout/agent_loop.py), documented there.
    # Where training episodes come from: env (the built-in agent loop on env.name's tasks) | proxy (your
    # own agent through an OpenAI-compatible endpoint, rollout.proxy.*). Held-out evaluation uses env.name.
    source: str = "env"
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    engine: str = "vllm"  # vllm | hf
    temperature: float = 1.0
    top_p: float = 1.0
    tool_threads: int = 8
    max_engine_restarts: int = 3  # a vLLM engine whose process dies is restarted this many times per run
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    # Rollout workers (Ray actors, each one engine and many concurrent episodes) and their placement.
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {rollout_node: 1}
    worker_start_timeout_s: float = 600.0
    max_worker_restarts: int = 3  # dead workers replaced per run (their calls are re-queued)
    # How new weights reach the workers: object_store (Ray's, one put) | broadcast (gloo group, in buckets)
    weight_sync: str = "object_store"
    weight_sync_bucket_mb: int = 256
    weight_sync_timeout_s: float = 600.0


@dataclass
class AlgoConfig(LearnerSettings):
    # The learner's own keys (lr, weight_decay, grad_clip, clip_eps, kl_coef, loss_agg,
    # loss_agg_norm_length, importance_weights, is_cap, micro_batch_size, micro_batch_tokens,
    # pack_sequences, zero_stage) are the fields of LearnerSettings (rl/learner/settings.py).
    # The advantage estimator: grpo | dr_grpo (no division by the group std) | rloo | reinforce_pp
    # | ppo (GAE over a learned critic)
    name: str = "grpo"
    group_size: int = 8  # episodes per task (the GRPO group)
    tasks_per_step: int = 8
    # Optimizer steps per rollout batch: the batch is shuffled and cut into this many mini-batches,
    # each one step (as PPO's mini-batches; steps after the first are off-policy and clipped).
    mini_batches: int = 1
    # Groups whose rewards are all equal have zero advantage and only dilute the loss. With
    # drop_uniform_groups they are left out of the learner step; with refill_uniform_groups they are
    # also replaced by freshly generated groups, up to max_refill_factor x tasks_per_step per step
    # (DAPO's dynamic sampling).
    drop_uniform_groups: bool = False
    refill_uniform_groups: bool = False
    max_refill_factor: int = 2
    # PPO's critic (algo.name=ppo): a value model initialised from the policy's transformer.
    gamma: float = 1.0
    lam: float = 0.95
    critic_lr: float = 1e-4
    value_clip: float = 0.2


@dataclass
class SFTConfig:
    # Deliberately limited so RL has room to show what it adds: few demonstrations, mostly easy.
    num_demos: int = 1200
    difficulty_weights: dict[int, float] = field(default_factory=lambda: {1: 0.7, 2: 0.25, 3: 0.05})
    first_turn_epochs: int = 5  # turn curriculum: epochs supervising only each demo's first turn
    epochs: int = 3  # then epochs supervising every turn
    lr: float = 3e-3
    batch_size: int = 8
    seed: int = 0


@dataclass
class RewardConfig:
    # The weight of each term in the reward (rewards/base.py; 0: not computed): the environment's
    # verifier; format, -1 per failed tool call (on its turn); length, DAPO's soft over-length
    # penalty; orm, the outcome reward model at orm.path.
    verifier: float = 1.0
    format: float = 0.0
    length: float = 0.0
    orm: float = 0.0
    judge: float = 0.0  # an LLM judge (judge.*)
    length_soft_tokens: int = 0  # 0: 3/4 of rollout.max_total_tokens (the penalty reaches -1 at the max)
    # Terms holding a model (orm) run in their own Ray actor (rl/cluster/reward_pool.py) when Ray is on.
    cpus_per_worker: float = 1.0
    timeout_s: float = 600.0  # deadline of one group's scoring
    max_worker_restarts: int = 3
    # Stop the run when this many groups in a row had a term that could score none of their
    # episodes (every call to the judge failed, say): training on zeros teaches nothing. 0: never.
    max_failed_groups: int = 3


@dataclass
class OrmConfig:
    # `turnrl orm train|eval`: trajectory stores (a run's trajectories.jsonl) to train and judge on.
    data: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)  # empty: hold out eval_fraction of data's tasks
    eval_fraction: float = 0.2
    eval_plot: str = ""  # `turnrl orm eval` also draws its reliability diagram and accuracy by step here (PNG)
    sources: list[str] = field(default_factory=lambda: ["train"])  # record sources used (train, eval)
    label_key: str = "success"  # the verifier's outcome, or any boolean column of the records
    input: str = "webrl"  # webrl (instruction, actions, final observation) | full (the whole trajectory)
    base_path: str = "${model.path}"  # the model the ORM starts from
    path: str = "${cache_dir}/models/orm"  # where it is written, and read by reward.terms.orm
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 1024
    zero_stage: int = 2
    seed: int = 0
    # Weigh the rarer outcome up to the other's total in the loss, so P(success) = 0.5 sits between
    # the classes however rare successes are in the data (calibrated to a 50% prior, not the data's).
    balance_classes: bool = False
    threshold: float = 0.5  # in training runs: reward 1 if P(success) >= threshold (WebRL); < 0: P itself


@dataclass
class JudgeConfig(JudgeSettings):
    # The judge of reward.judge (rewards/judge.py): an OpenAI-compatible endpoint, e.g.
    # http://127.0.0.1:8000/v1 (`vllm serve`), or, without one, a local engine serving model_path.
    # Scoring, votes, retries and the unparseable policy: the fields of JudgeSettings.
    base_url: str = ""
    model: str = ""  # the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the endpoint's key, if any
    model_path: str = ""
    rubric: str = ""  # a Jinja template (task, trajectory, nonce, score_min, score_max, flag_turns); "": built in


@dataclass
class CurriculumConfig(CurriculumSettings):
    # true: tasks come from a persistent pool that grows from failed tasks (curricula/curriculum.py);
    # false: fresh tasks from the environment's generator every step.
    enabled: bool = False


@dataclass
class ReplayConfig(ReplaySettings):
    """Replay of confident past successes (curricula/replay.py); replay.ratio=0 turns it off."""


@dataclass
class LoggerConfig:
    wandb_mode: str = "auto"  # auto (online when logged in, else offline) | online | offline | disabled
    project: str = "turnrl"
    run_name: str = ""
    log_samples_every: int = 5  # steps between wandb tables of sample trajectories
    save_trajectories: bool = True  # every trained and evaluated episode to <out_dir>/trajectories.jsonl


@dataclass
class RayConfig:
    # false: one rollout worker in the trainer's own process, no Ray (for debugging with pdb).
    enabled: bool = True
    # "": start Ray on this machine, bound to 127.0.0.1. "auto" or "host:port": join that cluster.
    address: str = ""
    num_cpus: int = 0  # CPUs a local Ray may schedule (0: all of this machine's)


@dataclass
class TrainConfig:
    steps: int = 30
    seed: int = 0
    out_dir: str = "runs/${logger.project}-${env.name}"
    eval_every: int = 0  # 0: evaluate only before and after RL
    save_every: int = 10
    # A checkpoint directory (or a run's checkpoints/ folder: its latest) to resume from; auto: this
    # run's own latest checkpoint under out_dir if there is one (requeued SLURM jobs), else start fresh.
    resume: str = ""
    # Start over in a train.out_dir that holds a run (its outputs are deleted first); without it and
    # without train.resume such a run stops at start-up rather than overwrite the earlier run.
    overwrite: bool = False
    # Policy versions a trained sample may lag the learner by. 0: synchronous, on-policy training
    # (each step's groups are generated by the policy being trained). k > 0: generation runs up to
    # k versions ahead, overlapping rollout with training; combine with algo.importance_weights.
    max_staleness: int = 0
    # Deadline of every wait between rollout and learner (scored groups, admission slots).
    wait_timeout_s: float = 1800.0
    # DeepSpeed ranks of the learner: this process is rank 0, the others start as Ray actors with
    # these resources. Under torchrun leave it at 1: the launcher makes the ranks.
    learner_ranks: int = 1
    cpus_per_learner_rank: float = 1.0
    gpus_per_learner_rank: float = 0.0


@dataclass
class TurnRLConfig:
    # Where models are made and kept: $TURNRL_CACHE, else ~/.cache/turnrl.
    cache_dir: str = "${oc.env:TURNRL_CACHE,${oc.env:HOME}/.cache/turnrl}"
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    orm: OrmConfig = field(default_factory=OrmConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(TurnRLError, ValueError):
    """A bad config: unknown key, wrong type or an invalid value, named in the message."""


_ENGINES = ("vllm", "hf")
_SOURCES = ("env", "proxy")
_WEIGHT_SYNC_BACKENDS = ("object_store", "broadcast")
_WANDB_MODES = ("auto", "online", "offline", "disabled")

ConfigStore.instance().store(name="turnrl_schema", node=TurnRLConfig)


def load_config(overrides: list[str] | None = None, config_name: str = "config") -> TurnRLConfig:
    """Compose `configs/<config_name>.yaml` with `overrides` (Hydra syntax) into a TurnRLConfig."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=list(overrides or []))
        cfg: TurnRLConfig = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None
    validate(cfg)
    return cfg


def _explain(err: Exception) -> str:
    """One line: Hydra wraps the OmegaConf error that names the key; its first line says what is
    wrong, its `full_key:` line which key."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    first = str(inner).strip().splitlines()[0]
    key = next((line.split(":", 1)[1].strip() for line in str(inner).splitlines()
                if line.strip().startswith("full_key:")), "")
    outer = str(err).strip().splitlines()[0].rstrip(".") if inner is not err else ""
    parts = [p for p in (outer, first if first != outer else "", f"key {key}" if key and key not in first else "")
             if p]
    return "invalid config: " + "; ".join(parts)


def validate(cfg: TurnRLConfig) -> None:
    """Checks of values that types alone cannot express: each section's own rules live with the
    settings class it extends (`check()`); the rules across sections live here. env.modules are
    imported first: they register the environments the checks look up."""
    try:
        import_env_modules(cfg.env.modules)
    except ImportError as err:
        raise ConfigError(f"env.modules: {err}") from None
    for key, check in [("algo", cfg.algo.check), ("replay", cfg.replay.check), ("judge", cfg.judge.check),
                       ("curriculum", lambda: cfg.curriculum.check(cfg.curriculum.enabled))]:
        try:
            check()
        except ValueError as err:
            raise ConfigError(_prefixed(key, getattr(cfg, key), str(err))) from None
    if cfg.env.name not in registered_envs():
        raise ConfigError(f"env.name={cfg.env.name!r} is not a registered environment: {registered_envs()}; for "
                          "one of your own, name the module that registers it in env.modules=[...]")
    for name, value, allowed in [("rollout.engine", cfg.rollout.engine, _ENGINES),
                                 ("rollout.source", cfg.rollout.source, _SOURCES),
                                 ("rollout.weight_sync", cfg.rollout.weight_sync, _WEIGHT_SYNC_BACKENDS),
                                 ("logger.wandb_mode", cfg.logger.wandb_mode, _WANDB_MODES),
                                 ("algo.name", cfg.algo.name, (*ADVANTAGE_ESTIMATORS, "ppo")),
                                 ("orm.input", cfg.orm.input, ORM_INPUTS),
                                 ("model.dtype", cfg.model.dtype, DTYPES)]:
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} must be one of {allowed}")
    if cfg.rollout.source == "proxy" and cfg.curriculum.enabled:
        raise ConfigError("rollout.source=proxy trains on your agent's own tasks: set curriculum.enabled=false")
    for name, value, without_ray in [
        ("rollout.num_workers", cfg.rollout.num_workers, "without Ray the one rollout worker runs in the trainer"),
        ("train.learner_ranks", cfg.train.learner_ranks, "extra ranks are Ray actors; or launch them with torchrun"),
    ]:
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
        if value > 1 and not cfg.ray.enabled:
            raise ConfigError(f"{name}={value} needs ray.enabled=true ({without_ray})")
    _validate_rewards(cfg)
    c = cfg.curriculum
    if c.enabled and "llm" in c.generators and not hasattr(get_env(cfg.env.name), "task_from_json"):
        raise ConfigError(f"curriculum.generators has llm, but environment {cfg.env.name!r} has no JSON form of its "
                          "tasks for a proposer to write (task_to_json/task_from_json, see curricula/proposer.py)")
    r = cfg.replay
    if r.ratio > 0 and cfg.algo.name == "ppo":
        raise ConfigError("replay.ratio > 0 needs a group-advantage estimator (grpo, dr_grpo, rloo, reinforce_pp): "
                          "a replayed episode keeps its advantage, which PPO's critic recomputes per token")
    if r.reflection_splices and (r.ratio <= 0 or cfg.rollout.source == "proxy"):
        raise ConfigError("replay.reflection_splices trains its splices as replayed episodes: it needs replay.ratio "
                          "> 0, and environments turnrl can replay (not rollout.source=proxy)")
    if cfg.algo.group_size < 2 and cfg.algo.name != "ppo":
        raise ConfigError(f"algo.group_size={cfg.algo.group_size} must be >= 2 for group-normalised advantages")
    if cfg.rollout.temperature <= 0:
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature} must be > 0: greedy rollouts give "
                          "every episode of a group the same actions, so GRPO has nothing to compare")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    env_cls = get_env(cfg.env.name)
    for name, levels in [("env.train_difficulties", cfg.env.train_difficulties),
                         ("env.eval_difficulties", cfg.env.eval_difficulties)]:
        unknown = [d for d in levels if d not in env_cls.difficulties]
        if not levels or unknown:
            raise ConfigError(f"{name}={list(levels)} must be a non-empty list of {cfg.env.name}'s difficulties "
                              f"{list(env_cls.difficulties)}")
    for name, value in [("algo.tasks_per_step", cfg.algo.tasks_per_step), ("train.steps", cfg.train.steps),
                        ("train.save_every", cfg.train.save_every),
                        ("env.eval_tasks_per_difficulty", cfg.env.eval_tasks_per_difficulty),
                        ("rollout.max_tokens_per_turn", cfg.rollout.max_tokens_per_turn),
                        ("rollout.max_total_tokens", cfg.rollout.max_total_tokens),
                        ("rollout.max_turns", cfg.rollout.max_turns), ("algo.mini_batches", cfg.algo.mini_batches),
                        ("rollout.tool_threads", cfg.rollout.tool_threads),
                        ("rollout.max_observation_chars", cfg.rollout.max_observation_chars),
                        ("model.corpus_episodes", cfg.model.corpus_episodes)]:
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    for name, value in [("rollout.tool_timeout_s", cfg.rollout.tool_timeout_s),
                        ("rollout.env_start_timeout_s", cfg.rollout.env_start_timeout_s),
                        ("reward.timeout_s", cfg.reward.timeout_s),
                        ("rollout.proxy.episode_timeout_s", cfg.rollout.proxy.episode_timeout_s)]:
        if value <= 0:
            raise ConfigError(f"{name}={value} must be > 0")
    if cfg.algo.refill_uniform_groups and not cfg.algo.drop_uniform_groups:
        raise ConfigError("algo.refill_uniform_groups=true needs algo.drop_uniform_groups=true")
    if cfg.reward.max_failed_groups < 0:
        raise ConfigError(f"reward.max_failed_groups={cfg.reward.max_failed_groups} must be >= 0 (0: never stop)")
    if cfg.algo.max_refill_factor < 0:
        raise ConfigError(f"algo.max_refill_factor={cfg.algo.max_refill_factor} must be >= 0")
    if cfg.train.max_staleness < 0:
        raise ConfigError(f"train.max_staleness={cfg.train.max_staleness} must be >= 0")
    if cfg.train.wait_timeout_s <= 0:
        raise ConfigError(f"train.wait_timeout_s={cfg.train.wait_timeout_s} must be > 0")
    episodes = cfg.algo.tasks_per_step * cfg.algo.group_size
    if cfg.algo.mini_batches > episodes:
        raise ConfigError(f"algo.mini_batches={cfg.algo.mini_batches} exceeds the {episodes} episodes of a step "
                          "(algo.tasks_per_step * algo.group_size)")


def _prefixed(key: str, section, message: str) -> str:
    """A settings class's message (`field=value must ...`) with the section's fields named as config
    keys (`algo.field=value`)."""
    names = "|".join(f.name for f in fields(section))
    return re.sub(rf"(?<![\w.'\"])((?:{names})(?:\.\w+)?)=", rf"{key}.\1=", message)


REWARD_TERMS = ("verifier", "format", "length", "orm", "judge")  # the weight fields of RewardConfig


def reward_terms(cfg: TurnRLConfig) -> dict[str, float]:
    """The reward terms with a non-zero weight, and their weights."""
    return {name: getattr(cfg.reward, name) for name in REWARD_TERMS if getattr(cfg.reward, name)}


def _validate_rewards(cfg: TurnRLConfig) -> None:
    if not reward_terms(cfg):
        raise ConfigError("every reward term has weight 0: set e.g. reward.verifier=1.0 or reward.orm=1.0")
    j = cfg.judge
    if cfg.reward.judge and not (j.base_url or j.model_path):
        raise ConfigError(f"reward.judge={cfg.reward.judge} needs judge.base_url (an OpenAI-compatible endpoint) or "
                          "judge.model_path (a model for a local engine)")


Settings = TypeVar("Settings")


def narrow(settings_cls: type[Settings], section) -> Settings:
    """The fields of `settings_cls` that a config section extending it holds, as that class: what an
    owner gets instead of the whole section (e.g. `narrow(EpisodeLimits, cfg.rollout)`)."""
    return settings_cls(**{f.name: getattr(section, f.name) for f in fields(settings_cls)})


def to_yaml(cfg: TurnRLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
