"""The actor-learner loop, top to bottom (`turnrl train`).

Two sides share one event loop. The rollout side (a producer of `rl/sources.py`) starts a group
of episodes whenever the buffer admits one, runs it on the least busy rollout worker and puts it,
scored, into the buffer. The learner side (`_train_rank0`'s step loop) takes a batch of groups,
updates the policy in a thread (so generation goes on meanwhile), pushes the new weights to every
worker (episodes in flight pause and continue under the new version) and logs and checkpoints.
`train.max_staleness` bounds how many versions generation may run ahead (`rl/buffer.py`); 0 is
synchronous, on-policy training. The starting (SFT) policy is evaluated before RL and the trained
one after, on the same held-out tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from curricula.curriculum import POOL_FILE, Curriculum, pilot_rollouts
from curricula.reflection import reflection_splices
from curricula.replay import ReplayBuffer
from curricula.tasks import UniformTaskSampler, heldout_tasks
from rewards.base import Reward
from rl.algo.advantages import compute_advantages
from rl.buffer import GroupBuffer
from rl.build import (
    config_record,
    episode_limits,
    learner_spec,
    make_proposer,
    make_reward,
    proxy_settings,
    sampling,
    start_rollout,
)
from rl.cluster.ray_env import start_ray
from rl.config import TurnRLConfig
from rl.errors import TurnRLError
from rl.evaluate import EvalResult, evaluate
from rl.learner.checkpoint import verify_checkpoint
from rl.learner.group import (
    LearnerGroup,
    LearnerSpec,
    finish_learner_ranks,
    run_learner_rank,
    start_learner_ranks,
    stop_learner_ranks,
)
from rl.metrics import MetricsSink, StepTimes, run_summary, sample_table, step_metrics
from rl.report import write_report
from rl.sources import ProxySource, generate_groups
from rollout.chat import ChatFormat
from rollout.envs import get_env
from rollout.store import TrajectoryStore, trajectory_record
from rollout.types import Task, Trajectory
from rollout.worker import Rollout

log = logging.getLogger(__name__)


def train(cfg: TurnRLConfig) -> dict:
    """Run a whole training job (blocking) and return its summary ({} on learner ranks > 0)."""
    return asyncio.run(train_async(cfg))


async def train_async(cfg: TurnRLConfig) -> dict:
    spec = learner_spec(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun
        run_learner_rank(spec)
        return {}
    finished = _check_start(cfg, spec.resume_from)
    if finished is not None:
        return finished
    started_ray = cfg.ray.enabled and start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.env.modules)
    learner_ranks = []
    try:
        t = cfg.train
        if t.learner_ranks > 1:
            learner_ranks = start_learner_ranks(spec, t.learner_ranks, t.cpus_per_learner_rank,
                                                t.gpus_per_learner_rank, cfg.ray.address)
        summary = await _train_rank0(cfg, spec)
        await finish_learner_ranks(learner_ranks)
        return summary
    finally:
        stop_learner_ranks(learner_ranks)
        if started_ray:
            ray.shutdown()


# What a run writes under train.out_dir (train.log aside: this run's log is already open there).
RUN_OUTPUTS = ("metrics.jsonl", "trajectories.jsonl", "summary.json", "report.png", POOL_FILE, "checkpoints",
               "final_model", "wandb")


def _check_start(cfg: TurnRLConfig, resume_from: Path | None) -> dict | None:
    """Before anything starts: a fresh run never overwrites another in its out_dir (unless
    train.overwrite), a resumed one is not past train.steps; returns the summary of a run that
    already finished (a requeued job that has nothing left to do), else None."""
    out_dir, t = Path(cfg.train.out_dir), cfg.train
    if resume_from is None:
        found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
        if found and not t.overwrite and t.resume != "auto":
            raise RunStartError(f"train.out_dir={out_dir} holds a run ({', '.join(found)}): resume it with "
                                 "train.resume=auto, start over with train.overwrite=true (deletes those), or pick "
                                 "another train.out_dir")
        for name in found:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if found:
            log.warning("a fresh run in %s: deleted the earlier run's %s", out_dir, ", ".join(found))
        return None
    _check_same_shape(resume_from, Path(cfg.model.path))
    done = verify_checkpoint(resume_from)["step"]  # a damaged one is refused before anything starts
    if done > t.steps:
        raise RunStartError(f"train.steps={t.steps} is below the step of the checkpoint to resume ({resume_from}, "
                             f"step {done}): set train.steps >= {done}")
    summary = out_dir / "summary.json"
    if done == t.steps and summary.exists() and summary.stat().st_mtime >= resume_from.stat().st_mtime:
        log.info("the run in %s already finished (step %d, %s): nothing to do", out_dir, done, summary)
        return json.loads(summary.read_text())
    return None


_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads")


def _check_same_shape(checkpoint: Path, model_path: Path) -> None:
    """The checkpoint holds a model of model.path's shape (else DeepSpeed fails deep inside with a
    size-mismatch traceback)."""
    try:
        saved = json.loads((checkpoint / "hf" / "config.json").read_text())
        ours = json.loads((model_path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return  # what is missing or torn is named when the checkpoint is verified
    differ = [f"{k} {saved.get(k)} vs {ours.get(k)}" for k in _SHAPE_KEYS if saved.get(k) != ours.get(k)]
    if differ:
        raise RunStartError(f"train.resume: checkpoint {checkpoint} holds a model of another shape than "
                            f"model.path={model_path} ({'; '.join(differ)}): resume with the model the run "
                            "started from")


class RunStartError(TurnRLError):
    """train.out_dir or train.resume does not fit the run asked for; the message says what to set."""


@dataclass
class _Run:
    """The components of one run on learner rank 0, built once from the config."""

    learners: LearnerGroup
    tokenizer: object
    rollout: Rollout
    reward: Reward
    store: TrajectoryStore | None
    sink: MetricsSink
    heldout: list[Task]
    buffer: GroupBuffer
    sampler: object  # UniformTaskSampler, or the curriculum's pool sampler
    curriculum: Curriculum | None
    replay: ReplayBuffer | None
    splice_chat: ChatFormat | None  # reflection splices' chat format

    def save_trajectories(self, trajs: list[Trajectory], tasks: list[Task], step: int, source: str) -> None:
        if self.store is not None:
            self.store.write(trajectory_record(t, task, self.tokenizer, step, source)
                             for t, task in zip(trajs, tasks, strict=True))


async def _build_run(cfg: TurnRLConfig, spec: LearnerSpec) -> _Run:
    out_dir = Path(cfg.train.out_dir)
    record = config_record(cfg)
    learners = LearnerGroup(spec, record)
    start, extra = learners.start_step, learners.extra
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    rollout = await start_rollout(cfg)
    if start > 0:
        await rollout.update_weights(learners.weights(), version=start)
    reward = make_reward(cfg)
    store = None
    # A resumed run's files hold exactly what they held at its checkpoint (the counts it saved).
    if cfg.logger.save_trajectories:
        store = TrajectoryStore(out_dir / "trajectories.jsonl", resume_step=start if start else None,
                                keep=extra.get("stored_records"))
    sink = MetricsSink(out_dir, record, cfg.logger.wandb_mode, cfg.logger.project, cfg.logger.run_name,
                       resume_step=start, keep=extra.get("metrics_rows"))
    e = cfg.env
    heldout = heldout_tasks(e.name, e.eval_difficulties, e.eval_tasks_per_difficulty, e.eval_seed_offset)
    log.info("held-out set: %d %s tasks, %d per difficulty %s, seeds from env.eval_seed_offset=%d", len(heldout),
             e.name, e.eval_tasks_per_difficulty, e.eval_difficulties, e.eval_seed_offset)
    buffer = GroupBuffer(cfg.algo.tasks_per_step, cfg.train.max_staleness, cfg.train.wait_timeout_s,
                         filter_uniform=cfg.algo.refill_uniform_groups,
                         max_refills=cfg.algo.max_refill_factor * cfg.algo.tasks_per_step, version=start,
                         first_index=extra.get("next_group_index", 0))
    curriculum = None
    if cfg.curriculum.enabled:  # tasks from a pool that grows out of the failed ones
        pilot = pilot_rollouts(rollout, sampling(cfg), lambda: curriculum.max_turns(buffer.version))
        curriculum = Curriculum.open(out_dir, cfg.curriculum, e.name, e.train_difficulties, cfg.train.seed,
                                     e.eval_seed_offset, spec.resume_from, make_proposer(cfg), pilot)
        sampler = curriculum.sampler
    else:
        sampler = UniformTaskSampler(e.name, e.train_difficulties, cfg.train.seed, seed_limit=e.eval_seed_offset)
    replay = ReplayBuffer(cfg.replay, cfg.train.seed) if cfg.replay.ratio > 0 else None
    splice_chat = ChatFormat(tokenizer, get_env(e.name).tools) if cfg.replay.reflection_splices else None
    run = _Run(learners, tokenizer, rollout, reward, store, sink, heldout, buffer, sampler, curriculum, replay,
               splice_chat)
    _restore_run_state(run, extra)
    return run


def _run_state(run: _Run, sft_eval: EvalResult) -> dict:
    """What a checkpoint keeps of the run beside the learner; `_restore_run_state` reads it back."""
    state = {"sampler": run.sampler.state_dict(), "eval_sft": asdict(sft_eval),
             "next_group_index": run.buffer.next_index, "metrics_rows": len(run.sink.history),
             "stored_records": run.store.records if run.store is not None else None}
    if run.curriculum is not None:
        state["curriculum"] = run.curriculum.state_dict()
    if run.replay is not None:
        state["replay"] = run.replay.state_dict()
    return state


def _restore_run_state(run: _Run, state: dict) -> None:
    """The samplers' and replay's state of a resumed run (the buffer's ids and the SFT evaluation are
    read where they are made)."""
    if run.curriculum is not None and "curriculum" in state:
        run.curriculum.load_state_dict(state["curriculum"])
    elif run.curriculum is None and "sampler" in state:
        run.sampler.load_state_dict(state["sampler"])
    if run.replay is not None and "replay" in state:
        run.replay.load_state_dict(state["replay"])


async def _replay_step(cfg: TurnRLConfig, run: _Run, trajs: list[Trajectory], group_ids: list[str],
                       rewards: torch.Tensor, tasks: list[Task], step: int) -> dict[str, float]:
    """After the update: this step's successes join the replay buffer (replayed from the next step
    on), and its failures spliced onto them (curricula/reflection.py)."""
    advantages = compute_advantages(cfg.algo.name, rewards, group_ids).tolist()
    metrics = {"replay/added": float(run.replay.add(trajs, advantages, step + 1))}
    if cfg.replay.reflection_splices:
        splices = await reflection_splices(trajs, group_ids, tasks, advantages, run.splice_chat, episode_limits(cfg),
                                           cfg.replay.reflection_text)
        run.save_trajectories(splices.trajectories, splices.tasks, step + 1, "splice")
        metrics["replay/reflection_splices"] = float(
            run.replay.add(splices.trajectories, splices.advantages, step + 1, spliced=True))
    return metrics | {"replay/size": float(len(run.replay))}


async def _train_rank0(cfg: TurnRLConfig, spec: LearnerSpec) -> dict:
    out_dir = Path(cfg.train.out_dir)
    run = await _build_run(cfg, spec)
    learners, rollout, buffer, sink, curriculum = run.learners, run.rollout, run.buffer, run.sink, run.curriculum
    start_step, steps = learners.start_step, cfg.train.steps
    producer = None
    run_start = time.perf_counter()
    try:
        if "eval_sft" in learners.extra:  # resumed: logged and stored by the first run
            sft_eval = EvalResult(**learners.extra["eval_sft"])
        else:
            sft_eval, sft_trajs = await evaluate(rollout, run.heldout, desc="eval (SFT policy)")
            run.save_trajectories(sft_trajs, run.heldout, start_step, "eval")
            log.info("held-out success of the starting policy: %.3f %s", sft_eval.success,
                     sft_eval.success_by_difficulty)
            sink.log({**sft_eval.metrics("eval/"), "eval/success_sft": sft_eval.success}, step=start_step)

        # rollout.source=proxy: your own agent plays the episodes through an OpenAI-compatible endpoint.
        proxy = None
        if cfg.rollout.source == "proxy":
            proxy = ProxySource(cfg.rollout.proxy, proxy_settings(cfg), cfg.algo.group_size, buffer, rollout,
                                run.tokenizer)
        producer = asyncio.create_task(proxy.run() if proxy else generate_groups(
            buffer, rollout, run.reward, run.sampler, sampling(cfg), cfg.algo.group_size, cfg.train.seed,
            curriculum.max_turns if curriculum else lambda version: None))
        bar = tqdm(range(start_step, steps), desc="train", unit="step", initial=start_step, total=steps)
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
            replayed = run.replay.candidates(len(trajs)) if run.replay is not None else []
            train_metrics = await asyncio.to_thread(learners.update, trajs, group_ids, rewards,
                                                    run.tokenizer.pad_token_id, step, replayed)
            t_train = time.perf_counter() - t1
            if run.replay is not None:
                train_metrics |= await _replay_step(cfg, run, trajs, group_ids, rewards, tasks, step)
            t2 = time.perf_counter()
            state = await asyncio.to_thread(learners.weights)
            await rollout.update_weights(state, version=step + 1)  # in-flight episodes pause, then go on
            t_sync = time.perf_counter() - t2

            stats = buffer.stats
            metrics = step_metrics(groups, train_metrics, stats, rollout.stats(),
                                   StepTimes(t_wait, t_train, t_sync, time.perf_counter() - t0))
            metrics |= proxy.metrics() if proxy else {}
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
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < steps:
                mid_eval, _ = await evaluate(rollout, run.heldout, desc=f"eval step {step + 1}")
                metrics.update(mid_eval.metrics("eval/"))
            sink.log(metrics, step=step + 1)
            await asyncio.to_thread(run.save_trajectories, trajs, tasks, step + 1, "train")
            bar.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}", stale=max(stats.staleness),
                            ready=stats.ready)
            log.info("step %d: success %.3f reward %.3f loss %.4f staleness %d wait %.2fs sync %.2fs", step + 1,
                     metrics["rollout/success_rate"], metrics["reward/mean"], train_metrics.get("train/loss", 0.0),
                     max(stats.staleness), t_wait, t_sync)
            if cfg.logger.log_samples_every and (step + 1) % cfg.logger.log_samples_every == 0:
                sink.log_table("rollout/samples", *sample_table(trajs, run.tokenizer), step=step + 1)
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == steps:
                # Before the next version is admitted, so that (synchronously) no task of the next
                # step has been drawn yet and a resumed run continues with the same tasks.
                await asyncio.to_thread(learners.save, step + 1, _run_state(run, sft_eval),
                                        curriculum.save if curriculum else None)
            await buffer.set_version(step + 1)
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

        final_eval, final_trajs = await evaluate(rollout, run.heldout, desc="eval (final policy)")
        run.save_trajectories(final_trajs, run.heldout, steps, "eval")
        sink.log({**final_eval.metrics("eval/"), "eval/success_final": final_eval.success}, step=steps)
        sink.log_table("eval/samples", *sample_table(final_trajs, run.tokenizer), step=steps)
        learners.save_final()
        run.tokenizer.save_pretrained(out_dir / "final_model")
        summary = run_summary(sft_eval, final_eval, steps, cfg.train.max_staleness, learners.world_size, buffer.stats,
                              rollout.stats(), sink.history, time.perf_counter() - run_start, out_dir / "final_model",
                              {"pool_size": len(curriculum.pool), **curriculum.totals} if curriculum else None)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_report(sink.history, sft_eval.success, final_eval.success, out_dir / "report.png")
        sink.set_summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
        return summary
    finally:
        learners.stop()
        if producer is not None and not producer.done():
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        sink.close()
        if curriculum is not None:
            curriculum.pool.close()
        await rollout.shutdown()
