"""The actor-learner loop, top to bottom.

Two sides share one event loop. The rollout side (`generate_groups`) starts a group of episodes
whenever the buffer admits one, runs it on the least busy rollout worker (Ray actors,
`rl/rollout_pool.py`) and puts it, scored, into the buffer. The learner side (`train_async`'s step
loop) takes a batch of groups, updates the policy in a thread (so generation goes on meanwhile),
pushes the new weights to every worker (episodes in flight pause and continue under the new
version) and logs and checkpoints. `train.max_staleness` bounds how many
versions generation may run ahead (`rl/buffer.py`); 0 is synchronous, on-policy training.
Evaluates the starting (SFT) policy before RL and the trained one after, on the same held-out tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from transformers import AutoTokenizer

from curricula.curriculum import Curriculum, pilot_rollouts
from curricula.reflection import reflection_splices
from curricula.replay import ReplayBuffer
from curricula.tasks import UniformTaskSampler, heldout_tasks
from rewards.base import Reward
from rl.advantages import compute_advantages
from rl.buffer import GroupBuffer, ScoredGroup
from rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from rl.config import TurnRLConfig
from rl.critic import Critic, CriticConfig
from rl.engines import episode_limits, make_proposer, make_reward
from rl.evaluate import EvalResult, evaluate
from rl.learner import Learner, LearnerConfig
from rl.learner_ranks import announce, finish_learner_ranks, follow_rank0, start_learner_ranks, stop_learner_ranks
from rl.metrics import MetricsSink, history_mean, mean_by_key, rollout_metrics, sample_table, workers_summary
from rl.proxy_source import ProxySource
from rl.report import write_report
from rl.rollout_pool import start_ray, start_rollout
from rl.update import policy_update
from rollout.chat import ChatFormat
from rollout.engines.base import SamplingConfig
from rollout.env import get_env
from rollout.store import TrajectoryStore, trajectory_record
from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)


def learner_config(cfg: TurnRLConfig) -> LearnerConfig:
    a = cfg.algo
    return LearnerConfig(lr=a.lr, weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                         micro_batch_size=a.micro_batch_size, micro_batch_tokens=a.micro_batch_tokens,
                         pack_sequences=a.pack_sequences, clip_eps=a.clip_eps, kl_coef=a.kl_coef,
                         zero_stage=a.zero_stage, seed=cfg.train.seed, dtype=cfg.model.dtype,
                         temperature=cfg.rollout.temperature, loss_agg=a.loss_agg,
                         loss_agg_norm_length=a.loss_agg_norm_length or cfg.rollout.max_total_tokens,
                         importance_weights=a.importance_weights, is_cap=a.is_cap)


def _resolve_resume(resume: str, out_dir: str) -> Path | None:
    """`train.resume` names one checkpoint (`.../step_N`) or a folder of them (its latest); `auto`
    is this run's own latest checkpoint if it has one (a requeued job), else a fresh start."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(Path(out_dir) / "checkpoints")
    path = Path(resume)
    if (path / "meta.json").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"train.resume={resume}: no complete checkpoint there")
    return latest


async def generate_groups(buffer: GroupBuffer, rollout, reward: Reward, sampler, sampling: SamplingConfig,
                          group_size: int, seed: int, max_turns_at: Callable[[int], int | None]) -> None:
    """The rollout side, run as a task beside the learner: start a group whenever the buffer admits
    one; each group's episodes run concurrently (up to `max_turns_at(policy version)` turns, a
    curriculum's turn cap) and, scored, go into the buffer. Runs until cancelled."""
    running: set[asyncio.Task] = set()

    async def one_group(index: int, task) -> None:
        try:
            group_sampling = replace(sampling, seed=seed * 1_000_003 + index * 4099)
            trajs = await rollout.run_episodes([task] * group_size, group_sampling, [str(index)] * group_size,
                                               max_turns_at(buffer.version))
            scored = await reward(task, trajs)  # overlaps other groups' generation
            await buffer.put(ScoredGroup(index, trajs, scored.assign(trajs), task, scored.metrics))
        except asyncio.CancelledError:
            buffer.abandon()
            raise
        except Exception as err:
            buffer.abandon()
            await buffer.fail(err)
            raise

    try:
        while True:
            index = await buffer.admit()
            group = asyncio.create_task(one_group(index, sampler.sample(1)[0]), name=f"group-{index}")
            running.add(group)
            group.add_done_callback(running.discard)
    except Exception as err:
        await buffer.fail(err)
        raise
    finally:
        for group in running:
            group.cancel()
        await asyncio.gather(*running, return_exceptions=True)


@dataclass
class Learners:
    """The policy learner and PPO's critic, and where they resumed from."""

    learner: Learner
    critic: Critic | None
    start_step: int = 0
    extra: dict = field(default_factory=dict)  # the checkpoint's extra state (samplers, SFT eval)
    checkpoint: Path | None = None  # the checkpoint resumed from (None: a fresh start)


def build_learners(cfg: TurnRLConfig) -> Learners:
    """The learner (and PPO's critic), resumed from `train.resume` if set. Joins the learner's process group."""
    checkpoint = _resolve_resume(cfg.train.resume, cfg.train.out_dir)
    learner = Learner(cfg.model.path, learner_config(cfg))
    critic = None
    if cfg.algo.name == "ppo":
        critic = Critic(cfg.model.path, CriticConfig(lr=cfg.algo.critic_lr, value_clip=cfg.algo.value_clip,
                                                     micro_batch_size=cfg.algo.micro_batch_size,
                                                     grad_clip=cfg.algo.grad_clip, zero_stage=cfg.algo.zero_stage,
                                                     seed=cfg.train.seed))
    built = Learners(learner, critic, checkpoint=checkpoint)
    if checkpoint is not None:
        built.start_step, built.extra = load_checkpoint(checkpoint, learner)
        log.info("rank %d resumed from %s at step %d", learner.rank, checkpoint, built.start_step)
    return built


def run_learner_rank(cfg: TurnRLConfig) -> dict:
    """A learner rank other than 0 (a torchrun process or a Ray actor): mirror rank 0's learner calls
    (rl/learner_ranks.py) until it stops."""
    torch.manual_seed(cfg.train.seed)
    built = build_learners(cfg)
    learner, critic = built.learner, built.critic
    out_dir = Path(cfg.train.out_dir)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    follow_rank0({
        "update": lambda *args: policy_update(learner, critic, cfg, *args),
        "weights": learner.state_dict_for_inference,
        "save": lambda step, extra: save_checkpoint(out_dir / "checkpoints", learner, step, config=config_dict,
                                                    extra=extra),
        "save_final": lambda: learner.save_pretrained(out_dir / "final_model"),
    })
    return {}


async def train_async(cfg: TurnRLConfig) -> dict:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun
        return run_learner_rank(cfg)
    started_ray = cfg.ray.enabled and start_ray(cfg)
    learner_ranks = []
    try:
        learner_ranks = start_learner_ranks(cfg) if cfg.train.learner_ranks > 1 else []
        summary = await _train_rank0(cfg)
        await finish_learner_ranks(learner_ranks)
        return summary
    finally:
        stop_learner_ranks(learner_ranks)
        if started_ray:
            import ray

            ray.shutdown()


async def _train_rank0(cfg: TurnRLConfig) -> dict:
    out_dir = Path(cfg.train.out_dir)
    ckpt_root = out_dir / "checkpoints"
    torch.manual_seed(cfg.train.seed)
    built = build_learners(cfg)
    learner, critic, start_step, extra = built.learner, built.critic, built.start_step, built.extra
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    ranks = learner.world_size

    def weights_for_rollout() -> dict[str, torch.Tensor]:
        if cfg.algo.zero_stage == 3:
            announce(ranks, "weights")  # ZeRO-3 gathers the shards: every rank takes part
        return learner.state_dict_for_inference()

    rollout = await start_rollout(cfg)
    if start_step > 0:
        await rollout.update_weights(weights_for_rollout(), version=start_step)
    reward = make_reward(cfg)
    store = None
    if cfg.logger.save_trajectories:
        store = TrajectoryStore(out_dir / "trajectories.jsonl", resume_step=start_step if start_step else None)

    def save_trajectories(trajs: list[Trajectory], tasks: list[Task], step: int, source: str) -> None:
        if store is not None:
            store.write(trajectory_record(t, task, tokenizer, step, source) for t, task in zip(trajs, tasks,
                                                                                               strict=True))
    sink = MetricsSink(out_dir, config_dict, cfg.logger.wandb_mode, cfg.logger.project, cfg.logger.run_name,
                       resume_step=start_step)
    heldout = heldout_tasks(cfg.env.name, cfg.env.eval_difficulties, cfg.env.eval_tasks_per_difficulty,
                            cfg.env.eval_seed_offset)
    curriculum = None
    if cfg.curriculum.enabled:  # tasks from a pool that grows out of the failed ones
        curriculum = Curriculum.open(out_dir, cfg.curriculum, cfg.env.name, cfg.env.train_difficulties, cfg.train.seed,
                                     cfg.env.eval_seed_offset, built.checkpoint, make_proposer(cfg),
                                     pilot_rollouts(rollout, SamplingConfig(temperature=cfg.rollout.temperature,
                                                                            top_p=cfg.rollout.top_p),
                                                    lambda: curriculum.max_turns(buffer.version)))
        sampler = curriculum.sampler
        if "curriculum" in extra:
            curriculum.load_state_dict(extra["curriculum"])
    else:
        sampler = UniformTaskSampler(cfg.env.name, cfg.env.train_difficulties, cfg.train.seed,
                                     seed_limit=cfg.env.eval_seed_offset)
        if "sampler" in extra:
            sampler.load_state_dict(extra["sampler"])
    buffer = GroupBuffer(cfg.algo.tasks_per_step, cfg.train.max_staleness, cfg.train.wait_timeout_s,
                         filter_uniform=cfg.algo.refill_uniform_groups,
                         max_refills=cfg.algo.max_refill_factor * cfg.algo.tasks_per_step, version=start_step,
                         first_index=extra.get("next_group_index", 0))
    replay = ReplayBuffer(cfg.replay, cfg.train.seed) if cfg.replay.ratio > 0 else None
    splice_chat = ChatFormat(tokenizer, get_env(cfg.env.name).tools) if cfg.replay.reflection_splices else None
    if replay is not None and "replay" in extra:
        replay.load_state_dict(extra["replay"])
    producer = None
    run_start = time.perf_counter()
    try:
        if "eval_sft" in extra:
            sft_eval = EvalResult(**extra["eval_sft"])
        else:
            sft_eval, sft_trajs = await evaluate(rollout, heldout, desc="eval (SFT policy)")
            save_trajectories(sft_trajs, heldout, start_step, "eval")
            log.info("held-out success of the starting policy: %.3f %s", sft_eval.success,
                     sft_eval.success_by_difficulty)
        sink.log({**sft_eval.metrics("eval/"), "eval/success_sft": sft_eval.success}, step=start_step)

        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
        # rollout.source=proxy: your own agent plays the episodes through an OpenAI-compatible endpoint.
        proxy = ProxySource(cfg, buffer, rollout, tokenizer) if cfg.rollout.source == "proxy" else None
        producer = asyncio.create_task(proxy.run() if proxy else generate_groups(
            buffer, rollout, reward, sampler, sampling, cfg.algo.group_size, cfg.train.seed,
            curriculum.max_turns if curriculum else lambda version: None))
        bar = tqdm(range(start_step, cfg.train.steps), desc="train", unit="step", initial=start_step,
                   total=cfg.train.steps)
        for step in bar:
            t0 = time.perf_counter()
            groups = await buffer.take()  # waits for this step's scored groups
            t_wait = time.perf_counter() - t0
            trajs = [t for g in groups for t in g.trajectories]
            group_ids = [str(g.index) for g in groups for _ in g.trajectories]
            rewards = torch.tensor([r for g in groups for r in g.rewards])
            tasks = [g.task for g in groups for _ in g.trajectories]

            # The learner runs in a thread: the event loop keeps generating meanwhile (max_staleness > 0).
            t1 = time.perf_counter()
            replayed = replay.candidates(len(trajs)) if replay is not None else []
            update_args = (trajs, group_ids, rewards, tokenizer.pad_token_id, step, replayed)
            announce(ranks, "update", *update_args)
            train_metrics = await asyncio.to_thread(policy_update, learner, critic, cfg, *update_args)
            t_train = time.perf_counter() - t1
            if replay is not None:  # after the update: a step's own successes are replayed from the next on
                advantages = compute_advantages(cfg.algo.name, rewards, group_ids).tolist()
                added = replay.add(trajs, advantages, step + 1)
                if cfg.replay.reflection_splices:  # and failures spliced onto them (curricula/reflection.py)
                    splices = await reflection_splices(trajs, group_ids, tasks, advantages, splice_chat,
                                                       episode_limits(cfg), cfg.replay.reflection_text)
                    save_trajectories(splices.trajectories, splices.tasks, step + 1, "splice")
                    train_metrics["replay/reflection_splices"] = float(
                        replay.add(splices.trajectories, splices.advantages, step + 1, spliced=True))
                train_metrics |= {"replay/added": float(added), "replay/size": float(len(replay))}
            t2 = time.perf_counter()
            state = await asyncio.to_thread(weights_for_rollout)
            await rollout.update_weights(state, version=step + 1)  # in-flight episodes pause, then go on
            t_sync = time.perf_counter() - t2

            stats = buffer.stats
            workers = rollout.stats()
            step_s = time.perf_counter() - t0
            metrics = {
                **rollout_metrics(trajs),
                **{f"reward/{k}": v for k, v in mean_by_key([g.reward_metrics for g in groups]).items()},
                **train_metrics,
                "rollout/staleness_mean": sum(stats.staleness) / len(stats.staleness),
                "rollout/staleness_max": max(stats.staleness),
                "rollout/groups_in_flight": stats.in_flight,
                "rollout/groups_ready": stats.ready,
                "rollout/groups_dropped_stale": stats.dropped_stale,
                "rollout/groups_filtered_uniform": stats.filtered_uniform,
                "rollout/engine_restarts": workers.engine_restarts,
                "rollout/worker_restarts": workers.worker_restarts,
                "rollout/requeued_calls": workers.requeued_calls,
                "perf/wait_s": t_wait,
                "perf/train_s": t_train,
                "perf/weight_sync_s": t_sync,
                "perf/step_s": step_s,
                "perf/gen_tokens_per_s": sum(t.num_generated_tokens for t in trajs) / step_s,
                **(proxy.metrics() if proxy else {}),
            }
            # Every episode played this step, trained on or filtered as uniform: refill trains on
            # mixed groups only, so rollout/success_rate alone drifts towards one half.
            played = trajs + [t for g in buffer.take_filtered() for t in g.trajectories]
            if cfg.algo.refill_uniform_groups:
                metrics["rollout/played_success_rate"] = sum(t.success for t in played) / len(played)
            if curriculum is not None:
                metrics |= await curriculum.after_step([(t.task_id, t.success) for t in played], step + 1)
                if curriculum.last_accepted:
                    sink.log_table("curriculum/generated_tasks", ["task", "parent", "origin", "difficulty", "depth",
                                                                  "instruction"],
                                   [[t.task.id, t.task.parent_id, t.task.origin, t.task.difficulty, t.depth,
                                     t.task.instruction] for t in curriculum.last_accepted], step=step + 1)
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                mid_eval, _ = await evaluate(rollout, heldout, desc=f"eval step {step + 1}")
                metrics.update(mid_eval.metrics("eval/"))
            sink.log(metrics, step=step + 1)
            await asyncio.to_thread(save_trajectories, trajs, tasks, step + 1, "train")
            bar.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}", stale=max(stats.staleness),
                            ready=stats.ready)
            log.info("step %d: success %.3f reward %.3f loss %.4f staleness %d wait %.2fs sync %.2fs", step + 1,
                     metrics["rollout/success_rate"], metrics["reward/mean"], train_metrics.get("train/loss", 0.0),
                     max(stats.staleness), t_wait, t_sync)
            if cfg.logger.log_samples_every and (step + 1) % cfg.logger.log_samples_every == 0:
                sink.log_table("rollout/samples", *sample_table(trajs, tokenizer), step=step + 1)
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                # Before the next version is admitted, so that (synchronously) no task of the next
                # step has been drawn yet and a resumed run continues with the same tasks.
                extra = {"sampler": sampler.state_dict(), "eval_sft": asdict(sft_eval),
                         "next_group_index": buffer.next_index}
                if curriculum is not None:
                    extra["curriculum"] = curriculum.state_dict()
                if replay is not None:
                    extra["replay"] = replay.state_dict()
                announce(ranks, "save", step + 1, extra)
                await asyncio.to_thread(save_checkpoint, ckpt_root, learner, step + 1, config=config_dict,
                                        extra=extra, write_files=curriculum.save if curriculum else None)
            await buffer.set_version(step + 1)
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

        final_eval, final_trajs = await evaluate(rollout, heldout, desc="eval (final policy)")
        save_trajectories(final_trajs, heldout, cfg.train.steps, "eval")
        sink.log({**final_eval.metrics("eval/"), "eval/success_final": final_eval.success}, step=cfg.train.steps)
        sink.log_table("eval/samples", *sample_table(final_trajs, tokenizer), step=cfg.train.steps)
        announce(ranks, "save_final")
        learner.save_pretrained(out_dir / "final_model")
        tokenizer.save_pretrained(out_dir / "final_model")
        stats = buffer.stats
        summary = {
            "eval/success_sft": sft_eval.success,
            "eval/success_final": final_eval.success,
            "eval/success_gain": final_eval.success - sft_eval.success,
            "eval/success_sft_by_difficulty": sft_eval.success_by_difficulty,
            "eval/success_final_by_difficulty": final_eval.success_by_difficulty,
            "eval/num_tasks": final_eval.num_tasks,
            "train/steps": cfg.train.steps,
            "train/max_staleness": cfg.train.max_staleness,
            "train/learner_ranks": ranks,
            # Every group started is trained, dropped as stale, filtered as uniform, abandoned when the
            # run ended, or left ready.
            "rollout/groups": {"started": stats.started, "trained": stats.trained,
                               "dropped_stale": stats.dropped_stale, "filtered_uniform": stats.filtered_uniform,
                               "abandoned": stats.abandoned,
                               "ready_at_end": stats.ready},
            "rollout/workers": workers_summary(rollout.stats()),
            **({"curriculum": {"pool_size": len(curriculum.pool), **curriculum.totals}} if curriculum else {}),
            "perf/wall_s": time.perf_counter() - run_start,
            "perf/mean_weight_sync_s": history_mean(sink.history, "perf/weight_sync_s"),
            "final_model": str(out_dir / "final_model"),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_report(sink.history, sft_eval.success, final_eval.success, out_dir / "report.png")
        sink.set_summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
        return summary
    finally:
        announce(ranks, "stop")
        if producer is not None and not producer.done():
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        sink.close()
        if curriculum is not None:
            curriculum.pool.close()
        await rollout.shutdown()


def train(cfg: TurnRLConfig) -> dict:
    """Run a whole training job (blocking) and return its summary."""
    return asyncio.run(train_async(cfg))
