"""The training loop, top to bottom: roll out groups, score, compute advantages, take a learner
step, push the new weights into the engine, log, checkpoint. Evaluates the starting (SFT) policy
before RL and the trained one after, on the same held-out tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from transformers import AutoTokenizer

from curricula.tasks import UniformTaskSampler, heldout_tasks
from rewards.outcome import outcome_rewards
from rl.advantages import compute_advantages, varied_groups
from rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from rl.config import TurnRLConfig
from rl.engines import make_engine
from rl.evaluate import EvalResult, evaluate
from rl.learner import Learner, LearnerConfig, make_train_batch, split_mini_batches
from rl.metrics import MetricsSink
from rl.report import write_report
from rollout.agent_loop import EpisodeLimits, run_episodes
from rollout.chat import ChatFormat
from rollout.engines.base import SamplingConfig
from rollout.env import get_env
from rollout.types import Trajectory

log = logging.getLogger(__name__)


def episode_limits(cfg: TurnRLConfig) -> EpisodeLimits:
    r = cfg.rollout
    return EpisodeLimits(max_turns=r.max_turns, max_tokens_per_turn=r.max_tokens_per_turn,
                         max_total_tokens=r.max_total_tokens, max_consecutive_errors=r.max_consecutive_errors,
                         tool_timeout_s=r.tool_timeout_s)


def learner_config(cfg: TurnRLConfig) -> LearnerConfig:
    a = cfg.algo
    return LearnerConfig(lr=a.lr, weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                         micro_batch_size=a.micro_batch_size, clip_eps=a.clip_eps, kl_coef=a.kl_coef,
                         zero_stage=a.zero_stage, seed=cfg.train.seed, dtype=cfg.model.dtype,
                         temperature=cfg.rollout.temperature, loss_agg=a.loss_agg,
                         loss_agg_norm_length=a.loss_agg_norm_length or cfg.rollout.max_total_tokens,
                         importance_weights=a.importance_weights, is_cap=a.is_cap)


def rollout_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    n = len(trajs)
    rewards = torch.tensor([t.reward for t in trajs])
    turns = [len(t.turns) for t in trajs]
    metrics = {
        "rollout/success_rate": sum(t.success for t in trajs) / n,
        "rollout/mean_turns": sum(turns) / n,
        "rollout/gen_tokens": float(sum(t.num_generated_tokens for t in trajs)),
        "rollout/mean_length": sum(len(t.token_ids) for t in trajs) / n,
        "rollout/tool_error_rate": sum(tu.tool_error for t in trajs for tu in t.turns) / max(sum(turns), 1),
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if n > 1 else 0.0,
    }
    for traj in trajs:
        key = f"rollout/finish_{traj.finish_reason.value}"
        metrics[key] = metrics.get(key, 0.0) + 1.0 / n
    return metrics


def sample_table(trajs: list[Trajectory], tokenizer, limit: int = 4) -> tuple[list[str], list[list]]:
    rows = [[t.task_id, t.difficulty, t.success, t.reward, t.finish_reason.value, len(t.turns),
             tokenizer.decode(t.token_ids[t.prompt_length:], skip_special_tokens=False)] for t in trajs[:limit]]
    return ["task", "difficulty", "success", "reward", "finish", "turns", "episode"], rows


def _resolve_resume(resume: str) -> Path | None:
    """`train.resume` names one checkpoint (`.../step_N`) or a folder of them (its latest)."""
    if not resume:
        return None
    path = Path(resume)
    if (path / "meta.json").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"train.resume={resume}: no complete checkpoint there")
    return latest


async def train_async(cfg: TurnRLConfig) -> dict:
    out_dir = Path(cfg.train.out_dir)
    ckpt_root = out_dir / "checkpoints"
    resume_dir = _resolve_resume(cfg.train.resume)
    torch.manual_seed(cfg.train.seed)

    learner = Learner(cfg.model.path, learner_config(cfg))
    start_step, extra = 0, {}
    if resume_dir is not None:
        start_step, extra = load_checkpoint(resume_dir, learner)
        log.info("resumed from %s at step %d", resume_dir, start_step)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    env_cls = get_env(cfg.env.name)
    chat = ChatFormat(tokenizer, env_cls.tools)
    limits = episode_limits(cfg)
    engine = make_engine(cfg, cfg.model.path)
    if start_step > 0:
        await engine.update_weights(learner.state_dict_for_inference(), version=start_step)

    sink = MetricsSink(out_dir, OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.logger.wandb_mode,
                       cfg.logger.project, cfg.logger.run_name, resume_step=start_step)
    heldout = heldout_tasks(cfg.env.name, cfg.env.eval_difficulties, cfg.env.eval_tasks_per_difficulty,
                            cfg.env.eval_seed_offset)
    sampler = UniformTaskSampler(cfg.env.name, cfg.env.train_difficulties, cfg.train.seed,
                                 seed_limit=cfg.env.eval_seed_offset)
    if "sampler" in extra:
        sampler.load_state_dict(extra["sampler"])
    executor = ThreadPoolExecutor(cfg.rollout.tool_threads, thread_name_prefix="env")
    run_start = time.perf_counter()
    try:
        if "eval_sft" in extra:
            sft_eval = EvalResult(**extra["eval_sft"])
        else:
            sft_eval, _ = await evaluate(engine, chat, heldout, limits, desc="eval (SFT policy)")
            log.info("held-out success of the starting policy: %.3f %s", sft_eval.success,
                     sft_eval.success_by_difficulty)
        sink.log({**sft_eval.metrics("eval/"), "eval/success_sft": sft_eval.success}, step=start_step)

        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
        group_size = cfg.algo.group_size
        for step in tqdm(range(start_step, cfg.train.steps), desc="train", unit="step",
                         initial=start_step, total=cfg.train.steps):
            t0 = time.perf_counter()
            tasks = sampler.sample(cfg.algo.tasks_per_step)
            episodes = [task for task in tasks for _ in range(group_size)]
            group_ids = [f"{step}-{i // group_size}" for i in range(len(episodes))]
            step_sampling = replace(sampling, seed=cfg.train.seed * 1_000_003 + step * 4099)
            with tqdm(total=len(episodes), desc="rollout", unit="ep", leave=False) as bar:
                trajs = await run_episodes(engine, chat, episodes, step_sampling, limits, group_ids, executor,
                                           on_done=bar.update)
            t_rollout = time.perf_counter() - t0

            rewards = torch.tensor(outcome_rewards(trajs))
            advantages = compute_advantages(cfg.algo.name, rewards, group_ids)
            keep = varied_groups(rewards, group_ids)
            informative = keep.float().mean().item()
            if not cfg.algo.drop_uniform_groups:
                keep = torch.ones_like(keep)
            t1 = time.perf_counter()
            train_metrics = {}
            if keep.any():
                batch = make_train_batch([t for t, k in zip(trajs, keep, strict=True) if k], advantages[keep],
                                         tokenizer.pad_token_id)
                if cfg.algo.importance_weights != "none":
                    batch.proximal_logprobs = learner.proximal_logprobs(batch)
                shuffle = torch.Generator().manual_seed(cfg.train.seed * 7919 + step)
                per_update = [learner.train_step(mini_batch) for mini_batch in
                              split_mini_batches(batch, min(cfg.algo.mini_batches, len(batch)), shuffle)]
                train_metrics = {k: sum(m[k] for m in per_update) / len(per_update) for k in per_update[0]}
            else:
                log.info("step %d: every group's rewards are equal; no learner step", step + 1)
            t_train = time.perf_counter() - t1

            t2 = time.perf_counter()
            await engine.update_weights(learner.state_dict_for_inference(), version=step + 1)
            t_sync = time.perf_counter() - t2

            gen_tokens = sum(t.num_generated_tokens for t in trajs)
            metrics = {
                **rollout_metrics(trajs),
                **{f"train/{k}": v for k, v in train_metrics.items()},
                "train/informative_group_share": informative,
                "train/optimizer_steps": learner.step,
                "perf/rollout_s": t_rollout,
                "perf/train_s": t_train,
                "perf/weight_sync_s": t_sync,
                "perf/step_s": time.perf_counter() - t0,
                "perf/gen_tokens_per_s": gen_tokens / max(t_rollout, 1e-9),
            }
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                mid_eval, _ = await evaluate(engine, chat, heldout, limits, desc=f"eval step {step + 1}")
                metrics.update(mid_eval.metrics("eval/"))
            sink.log(metrics, step=step + 1)
            log.info("step %d: success %.3f reward %.3f loss %.4f sync %.2fs", step + 1,
                     metrics["rollout/success_rate"], metrics["reward/mean"], train_metrics.get("loss", 0.0), t_sync)
            if cfg.logger.log_samples_every and (step + 1) % cfg.logger.log_samples_every == 0:
                sink.log_table("rollout/samples", *sample_table(trajs, tokenizer), step=step + 1)
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                save_checkpoint(ckpt_root, learner, step + 1, config=OmegaConf.to_container(
                    OmegaConf.structured(cfg)), extra={"sampler": sampler.state_dict(), "eval_sft": asdict(sft_eval)})

        final_eval, final_trajs = await evaluate(engine, chat, heldout, limits, desc="eval (final policy)")
        sink.log({**final_eval.metrics("eval/"), "eval/success_final": final_eval.success}, step=cfg.train.steps)
        sink.log_table("eval/samples", *sample_table(final_trajs, tokenizer), step=cfg.train.steps)
        learner.save_pretrained(out_dir / "final_model")
        tokenizer.save_pretrained(out_dir / "final_model")
        summary = {
            "eval/success_sft": sft_eval.success,
            "eval/success_final": final_eval.success,
            "eval/success_gain": final_eval.success - sft_eval.success,
            "eval/success_sft_by_difficulty": sft_eval.success_by_difficulty,
            "eval/success_final_by_difficulty": final_eval.success_by_difficulty,
            "eval/num_tasks": final_eval.num_tasks,
            "train/steps": cfg.train.steps,
            "perf/wall_s": time.perf_counter() - run_start,
            "perf/mean_weight_sync_s": _mean(sink.history, "perf/weight_sync_s"),
            "final_model": str(out_dir / "final_model"),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_report(sink.history, sft_eval.success, final_eval.success, out_dir / "report.png")
        sink.set_summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
        return summary
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        sink.close()
        await engine.shutdown()


def _mean(history: list[dict], key: str) -> float:
    values = [row[key] for row in history if row.get(key) is not None]
    return sum(values) / len(values) if values else 0.0


def train(cfg: TurnRLConfig) -> dict:
    """Run a whole training job (blocking) and return its summary."""
    return asyncio.run(train_async(cfg))
