"""Build the configured components: the inference engine, a rollout worker around it, the reward."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from rewards.base import FormatPenalty, LengthPenalty, Reward, VerifierReward, WeightedSum
from rl.config import TurnRLConfig, reward_terms
from rollout.agent_loop import EpisodeLimits
from rollout.chat import ChatFormat
from rollout.engines.base import Engine
from rollout.env import get_env
from rollout.worker import RolloutWorker


def make_engine(cfg: TurnRLConfig, model_path: str, kind: str | None = None) -> Engine:
    """The engine named by `rollout.engine` (or `kind`), serving `model_path`."""
    kind = kind or cfg.rollout.engine
    if kind == "hf":
        from rollout.engines.hf import HFEngine

        return HFEngine(model_path, dtype=cfg.model.dtype)
    from rollout.engines.restarting import RestartingEngine
    from rollout.engines.vllm_engine import VLLMEngine

    v = cfg.rollout.vllm

    def start() -> VLLMEngine:
        return VLLMEngine(model_path, dtype=cfg.model.dtype, max_model_len=v.max_model_len, seed=cfg.train.seed,
                          kv_cache_gib=v.kv_cache_gib, gpu_memory_utilization=v.gpu_memory_utilization,
                          enforce_eager=v.enforce_eager, tensor_parallel_size=v.tensor_parallel_size)

    # vLLM's engine core is a separate process: if it dies, start a new one and carry on.
    return RestartingEngine(start, max_restarts=cfg.rollout.max_engine_restarts)


def episode_limits(cfg: TurnRLConfig) -> EpisodeLimits:
    r = cfg.rollout
    return EpisodeLimits(max_turns=r.max_turns, max_tokens_per_turn=r.max_tokens_per_turn,
                         max_total_tokens=r.max_total_tokens, max_consecutive_errors=r.max_consecutive_errors,
                         tool_timeout_s=r.tool_timeout_s, simulated_tool_latency_s=r.simulated_tool_latency_ms / 1000,
                         mask_error_turns=r.mask_error_turns)


def make_rollout_worker(cfg: TurnRLConfig, index: int = 0, node_id: str = "") -> RolloutWorker:
    """The configured engine serving `model.path`, with the environment's chat format and episode limits."""
    chat = ChatFormat(AutoTokenizer.from_pretrained(cfg.model.path), get_env(cfg.env.name).tools)
    return RolloutWorker(make_engine(cfg, cfg.model.path), chat, episode_limits(cfg), cfg.rollout.tool_threads,
                         index, node_id)


def _orm_term(cfg: TurnRLConfig) -> Reward:
    from rewards.orm import OrmReward, OrmScorer

    scorer = OrmScorer(cfg.orm.path, cfg.orm.max_length, cfg.orm.batch_size)
    return OrmReward(scorer, AutoTokenizer.from_pretrained(cfg.model.path), cfg.orm.input,
                     None if cfg.orm.threshold < 0 else cfg.orm.threshold)


def _judge_term(cfg: TurnRLConfig) -> Reward:
    from rewards.judge import JudgeReward, load_rubric
    from rollout.completion import EngineCompletion, HTTPCompletion, api_key

    j = cfg.judge
    if j.base_url:
        client = HTTPCompletion(j.base_url, j.model, api_key(j.api_key_env))
    else:
        client = EngineCompletion(make_engine(cfg, j.model_path), AutoTokenizer.from_pretrained(j.model_path))
    return JudgeReward(client, load_rubric(j.rubric), AutoTokenizer.from_pretrained(cfg.model.path), j)


def make_proposer(cfg: TurnRLConfig):
    """The LLM task proposer of `curriculum.generators=[..., llm]` (None without it)."""
    from curricula.proposer import LLMProposer
    from rollout.completion import EngineCompletion, HTTPCompletion, api_key

    if "llm" not in cfg.curriculum.generators:
        return None
    p = cfg.curriculum.proposer
    if p.base_url:
        return LLMProposer(HTTPCompletion(p.base_url, p.model, api_key(p.api_key_env)), p)
    path = p.model_path or str(Path(cfg.cache_dir) / "models" / "tiny-task-writer")
    if not Path(path, "config.json").exists():
        raise FileNotFoundError(f"curriculum.generators has llm but there is no proposer model at {path}: make the "
                                "tiny task writer with `turnrl proposer train`, or set curriculum.proposer.base_url "
                                "or curriculum.proposer.model_path")
    return LLMProposer(EngineCompletion(make_engine(cfg, path, p.engine), AutoTokenizer.from_pretrained(path)), p)


REWARD_TERM_BUILDERS = {
    "verifier": lambda cfg: VerifierReward(),
    "format": lambda cfg: FormatPenalty(),
    "length": lambda cfg: LengthPenalty(cfg.reward.length_soft_tokens or 3 * cfg.rollout.max_total_tokens // 4,
                                        cfg.rollout.max_total_tokens),
    "orm": _orm_term,
    "judge": _judge_term,
}
MODEL_TERMS = ("orm", "judge")  # hold a model: served by a Ray reward worker when Ray is on


def make_reward_term(name: str, cfg: TurnRLConfig) -> Reward:
    return REWARD_TERM_BUILDERS[name](cfg)


def make_reward(cfg: TurnRLConfig) -> WeightedSum:
    """The reward terms of non-zero weight as one weighted sum (model-holding terms in Ray reward
    workers when Ray is on)."""
    from rl.reward_worker import RemoteReward

    if cfg.reward.orm and not Path(cfg.orm.path, "config.json").exists():
        raise FileNotFoundError(f"reward.orm={cfg.reward.orm} but there is no ORM at orm.path={cfg.orm.path}: train "
                                "one with `turnrl orm train orm.data=[runs/<run>/trajectories.jsonl]`")
    terms = {}
    for name, weight in reward_terms(cfg).items():
        remote = name in MODEL_TERMS and cfg.ray.enabled
        terms[name] = (RemoteReward(cfg, name) if remote else make_reward_term(name, cfg), weight)
    return WeightedSum(terms)
