"""The one place that turns the config into components.

Every component is built here from the few settings it needs: the inference engine, the rollout
(a pool of Ray actors or one in-process worker), the reward, the task proposer, the learner
group's spec. What a Ray actor builds for itself (a rollout worker, a model-holding reward term)
travels as a small picklable spec whose `build` method the actor calls, never as the config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf
from transformers import AutoTokenizer

from curricula.proposer import LLMProposer
from curricula.replay import ReplaySettings
from rewards.base import FormatPenalty, LengthPenalty, Reward, StopOnFailedRewards, VerifierReward, WeightedSum
from rewards.judge import JudgeReward, load_rubric
from rewards.orm import OrmReward, OrmScorer
from rl.cluster.reward_pool import RemoteReward
from rl.cluster.rollout_pool import RolloutPool
from rl.config import JudgeConfig, TurnRLConfig, VLLMConfig, narrow, reward_terms
from rl.learner.checkpoint import resolve_resume
from rl.learner.critic import CriticConfig
from rl.learner.group import LearnerSpec
from rl.learner.learner import LearnerConfig
from rl.learner.settings import LearnerSettings
from rl.learner.update import UpdateSettings
from rollout.agent_loop import EpisodeLimits
from rollout.chat import ChatFormat
from rollout.completion import CompletionClient, EngineCompletion, HTTPCompletion, api_key
from rollout.engines.base import Engine, SamplingConfig
from rollout.engines.hf import HFEngine
from rollout.engines.restarting import RestartingEngine
from rollout.env import import_env_modules
from rollout.envs import get_env
from rollout.proxy import ProxySettings
from rollout.worker import Rollout, RolloutWorker


@dataclass(frozen=True)
class EngineSpec:
    """An inference engine to start: `kind` (vllm | hf) serving `model_path`."""

    kind: str
    model_path: str
    dtype: str
    seed: int
    vllm: VLLMConfig
    max_restarts: int  # vLLM engine cores restarted after a death, per run

    def build(self) -> Engine:
        if self.kind == "hf":
            return HFEngine(self.model_path, dtype=self.dtype)
        # vLLM is imported only when served: a machine that uses the HF engine needs none.
        from rollout.engines.vllm_engine import VLLMEngine

        v = self.vllm

        def start() -> VLLMEngine:
            return VLLMEngine(self.model_path, dtype=self.dtype, max_model_len=v.max_model_len, seed=self.seed,
                              kv_cache_gib=v.kv_cache_gib, gpu_memory_utilization=v.gpu_memory_utilization,
                              enforce_eager=v.enforce_eager, tensor_parallel_size=v.tensor_parallel_size)

        # vLLM's engine core is a separate process: if it dies, start a new one and carry on.
        return RestartingEngine(start, max_restarts=self.max_restarts)


def engine_spec(cfg: TurnRLConfig, model_path: str, kind: str | None = None) -> EngineSpec:
    """The engine of `rollout.engine` (or `kind`) serving `model_path`."""
    return EngineSpec(kind or cfg.rollout.engine, model_path, cfg.model.dtype, cfg.train.seed, cfg.rollout.vllm,
                      cfg.rollout.max_engine_restarts)


@dataclass(frozen=True)
class RolloutWorkerSpec:
    """A rollout worker: its engine, the environment's chat format and the episode limits."""

    engine: EngineSpec
    env_name: str
    limits: EpisodeLimits
    tool_threads: int
    env_modules: tuple[str, ...] = ()  # env.modules, imported first (a Ray worker is a fresh process)

    def build(self, index: int = 0, node_id: str = "") -> RolloutWorker:
        import_env_modules(self.env_modules)
        chat = ChatFormat(AutoTokenizer.from_pretrained(self.engine.model_path), get_env(self.env_name).tools)
        return RolloutWorker(self.engine.build(), chat, self.limits, self.tool_threads, index, node_id)


def rollout_worker_spec(cfg: TurnRLConfig) -> RolloutWorkerSpec:
    return RolloutWorkerSpec(engine_spec(cfg, cfg.model.path), cfg.env.name, episode_limits(cfg),
                             cfg.rollout.tool_threads, tuple(cfg.env.modules))


def episode_limits(cfg: TurnRLConfig) -> EpisodeLimits:
    return narrow(EpisodeLimits, cfg.rollout)


def sampling(cfg: TurnRLConfig) -> SamplingConfig:
    """The sampling of training episodes (evaluation is greedy)."""
    return SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)


def make_rollout_worker(cfg: TurnRLConfig) -> RolloutWorker:
    """One rollout worker in this process (`turnrl eval`, `ray.enabled=false`)."""
    return rollout_worker_spec(cfg).build()


async def start_rollout(cfg: TurnRLConfig) -> Rollout:
    """The configured rollout: `rollout.num_workers` Ray actors (Ray must be running), or, with
    `ray.enabled=false`, one worker in this process (for debugging)."""
    if not cfg.ray.enabled:
        return make_rollout_worker(cfg)
    return await RolloutPool.start(rollout_worker_spec(cfg).build, cfg.rollout, cfg.ray.address)


def proxy_settings(cfg: TurnRLConfig) -> ProxySettings:
    """The OpenAI-compatible endpoint of `rollout.source=proxy`: sampling locked to the run's."""
    p, r = cfg.rollout.proxy, cfg.rollout
    return ProxySettings(model_name=p.model_name, temperature=r.temperature, top_p=r.top_p, lock_sampling=True,
                         max_tokens_per_turn=r.max_tokens_per_turn, max_total_tokens=r.max_total_tokens,
                         episode_timeout_s=p.episode_timeout_s)


@dataclass(frozen=True)
class OrmTermSpec:
    """The ORM reward term (rewards/orm.py): the scorer at `orm_path` over the policy's tokenizer."""

    orm_path: str
    max_length: int
    batch_size: int
    policy_path: str  # its tokenizer decodes the trajectories into the ORM's input
    input_format: str
    threshold: float | None  # None: the reward is P(success) itself

    def build(self) -> Reward:
        scorer = OrmScorer(self.orm_path, self.max_length, self.batch_size)
        return OrmReward(scorer, AutoTokenizer.from_pretrained(self.policy_path), self.input_format, self.threshold)


@dataclass(frozen=True)
class JudgeTermSpec:
    """The LLM judge term (rewards/judge.py): an endpoint, or a local engine when `engine` is set."""

    judge: JudgeConfig
    policy_path: str
    engine: EngineSpec | None

    def build(self) -> Reward:
        j = self.judge
        client: CompletionClient
        if self.engine is None:
            client = HTTPCompletion(j.base_url, j.model, api_key(j.api_key_env))
        else:
            client = EngineCompletion(self.engine.build(), AutoTokenizer.from_pretrained(j.model_path))
        return JudgeReward(client, load_rubric(j.rubric), AutoTokenizer.from_pretrained(self.policy_path), j)


def _length_penalty(cfg: TurnRLConfig):
    max_tokens = cfg.rollout.max_total_tokens
    return partial(LengthPenalty, cfg.reward.length_soft_tokens or 3 * max_tokens // 4, max_tokens)


def _orm_term(cfg: TurnRLConfig):
    o = cfg.orm
    return OrmTermSpec(o.path, o.max_length, o.batch_size, cfg.model.path, o.input,
                       None if o.threshold < 0 else o.threshold).build


def _judge_term(cfg: TurnRLConfig):
    j = cfg.judge
    return JudgeTermSpec(j, cfg.model.path, None if j.base_url else engine_spec(cfg, j.model_path)).build


# Each reward term's name -> a function of the config giving the term's builder: a picklable callable
# of no arguments that makes the term (in a Ray reward worker, for the model terms).
REWARD_TERM_BUILDERS = {
    "verifier": lambda cfg: VerifierReward,
    "format": lambda cfg: FormatPenalty,
    "length": _length_penalty,
    "orm": _orm_term,
    "judge": _judge_term,
}
MODEL_TERMS = ("orm", "judge")  # hold a model: served by a Ray reward worker when Ray is on


def make_reward(cfg: TurnRLConfig) -> Reward:
    """The reward terms of non-zero weight as one weighted sum (model-holding terms in Ray reward
    workers when Ray is on), stopping the run after reward.max_failed_groups groups in a row that
    a term could not score."""
    if cfg.reward.orm and not Path(cfg.orm.path, "config.json").exists():
        raise FileNotFoundError(f"reward.orm={cfg.reward.orm} but there is no ORM at orm.path={cfg.orm.path}: train "
                                "one with `turnrl orm train orm.data=[runs/<run>/trajectories.jsonl]`")
    r = cfg.reward
    terms = {}
    for name, weight in reward_terms(cfg).items():
        build_term = REWARD_TERM_BUILDERS[name](cfg)
        remote = name in MODEL_TERMS and cfg.ray.enabled
        terms[name] = (RemoteReward(name, build_term, r.cpus_per_worker, r.timeout_s, r.max_worker_restarts)
                       if remote else build_term(), weight)
    return StopOnFailedRewards(WeightedSum(terms), r.max_failed_groups)


def task_writer_path(cfg: TurnRLConfig) -> str:
    """Where `turnrl proposer train` writes the tiny task writer and the llm generator reads it."""
    return cfg.curriculum.proposer.model_path or str(Path(cfg.cache_dir) / "models" / "tiny-task-writer")


def make_proposer(cfg: TurnRLConfig) -> LLMProposer | None:
    """The LLM task proposer of `curriculum.generators=[..., llm]` (None without it)."""
    if "llm" not in cfg.curriculum.generators:
        return None
    p = cfg.curriculum.proposer
    if p.base_url:
        return LLMProposer(HTTPCompletion(p.base_url, p.model, api_key(p.api_key_env)), p)
    path = task_writer_path(cfg)
    if not Path(path, "config.json").exists():
        raise FileNotFoundError(f"curriculum.generators has llm but there is no proposer model at {path}: make the "
                                "tiny task writer with `turnrl proposer train`, or set curriculum.proposer.base_url "
                                "or curriculum.proposer.model_path")
    return LLMProposer(EngineCompletion(engine_spec(cfg, path, p.engine).build(), AutoTokenizer.from_pretrained(path)),
                       p)


def update_settings(cfg: TurnRLConfig) -> UpdateSettings:
    a = cfg.algo
    return UpdateSettings(estimator=a.name, drop_uniform_groups=a.drop_uniform_groups,
                          importance_weights=a.importance_weights, mini_batches=a.mini_batches, gamma=a.gamma,
                          lam=a.lam, seed=cfg.train.seed, replay=narrow(ReplaySettings, cfg.replay))


def learner_config(cfg: TurnRLConfig) -> LearnerConfig:
    """The algo.* learner keys, and what the run fixes: seed, dtype, the rollout's temperature."""
    settings = narrow(LearnerSettings, cfg.algo)
    settings = replace(settings, loss_agg_norm_length=settings.loss_agg_norm_length or cfg.rollout.max_total_tokens)
    return LearnerConfig(**vars(settings), seed=cfg.train.seed, dtype=cfg.model.dtype,
                         temperature=cfg.rollout.temperature)


def learner_spec(cfg: TurnRLConfig) -> LearnerSpec:
    """What every learner rank builds: the policy learner, PPO's critic, and where they resume from."""
    a = cfg.algo
    critic = None
    if a.name == "ppo":
        critic = CriticConfig(lr=a.critic_lr, value_clip=a.value_clip, micro_batch_size=a.micro_batch_size,
                              grad_clip=a.grad_clip, zero_stage=a.zero_stage, seed=cfg.train.seed)
    return LearnerSpec(cfg.model.path, learner_config(cfg), critic, update_settings(cfg), Path(cfg.train.out_dir),
                       resolve_resume(cfg.train.resume, cfg.train.out_dir))


def config_record(cfg: TurnRLConfig) -> dict:
    """The resolved config as plain data: for wandb and every checkpoint."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))
