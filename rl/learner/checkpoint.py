"""Atomic checkpoints of a `Learner`: everything needed to continue a run exactly.

Layout of `root/step_{N}/` (written under `root/.tmp-step_{N}/`, renamed into place when complete,
then `root/latest` is replaced to name it; a crash leaves at most a temp dir, which is ignored):

    hf/                      the policy in HF format (for inference, evaluation, export)
    deepspeed/               DeepSpeed's own checkpoint: fp32 weights and the (ZeRO-partitioned) optimizer
    rng/rank_{r}.pt          python, numpy, torch (and accelerator) RNG states of every rank
    config.json              the run config (JSON, for reading)
    extra.pt                 caller state (sampler state, metrics history), pickled so types survive
                             exactly (int dict keys, tuples), which JSON would not keep
    meta.json                step, world size, ZeRO stage and the byte size and SHA-256 of every
                             file above, checked on load: a changed byte is refused like a lost one

DeepSpeed's checkpoint (not a torch.save of the optimizer) because under ZeRO each rank holds only
its partition of the optimizer state and fp32 master weights; its loader puts them back.
Resuming needs the same number of learner ranks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl.errors import TurnRLError
from rl.learner.learner import Learner

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the manifest holds each file's SHA-256 (1: its size only)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_DS_TAG = "deepspeed"


class CheckpointError(TurnRLError, RuntimeError):
    """A checkpoint directory is missing, incomplete or corrupt; the message names the path and what."""


def _barrier(learner: Learner) -> None:
    if learner.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _non_finite_weights(learner: Learner) -> list[str]:
    """Names of this rank's parameters holding NaN or inf (under ZeRO-3: of its partitions)."""
    return [name for name, param in learner.model.named_parameters() if not torch.isfinite(param.detach()).all()]


def save_checkpoint(root: str | Path, learner: Learner, step: int, config: dict | None = None,
                    extra: dict | None = None, write_files: Callable[[Path], None] | None = None) -> Path:
    """Save `learner` at `step` to `root/step_{step}` atomically and point `root/latest` at it.

    A collective: call on every rank (a shared filesystem under multi-node). `config` must be
    JSON-serialisable; `extra` picklable (it comes back equal, types included); `write_files(dir)`
    (rank 0) adds files of other parts of the run (the task pool) inside the same atomic save.
    Returns the directory.
    """
    root = Path(root)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    bad = _non_finite_weights(learner)
    if bad:
        raise CheckpointError(f"not saving step {step}: the weights hold NaN or inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the last checkpoint stays the latest")
    try:
        _write_checkpoint(root, tmp, final, learner, step, config, extra, write_files)
    except (OSError, RuntimeError) as err:  # torch's writer raises RuntimeError for a full disk
        if learner.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)
        why = "the disk is full (ENOSPC: no space left on device)" if full else repr(err)
        raise CheckpointError(f"checkpoint step {step} could not be written under {root}: {why}; the last "
                              f"complete one ({latest_checkpoint(root)}) stays the one train.resume=auto "
                              "takes") from err
    return final


def _write_checkpoint(root: Path, tmp: Path, final: Path, learner: Learner, step: int, config: dict | None,
                      extra: dict | None, write_files: Callable[[Path], None] | None) -> None:
    if learner.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt
        tmp.mkdir()
        (tmp / "rng").mkdir()
    _barrier(learner)

    learner.save_pretrained(tmp / "hf")
    learner.engine.save_checkpoint(str(tmp / _DS_TAG), tag=_DS_TAG, save_latest=False)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{learner.rank}.pt")
    _barrier(learner)

    if learner.rank == 0:
        _write_json(tmp / "config.json", config or {})
        torch.save(extra or {}, tmp / "extra.pt")
        if write_files is not None:
            write_files(tmp)
        meta = {"format_version": FORMAT_VERSION, "step": step, "optimizer_steps": learner.step,
                "world_size": learner.world_size,
                "zero_stage": learner.cfg.zero_stage, "files": _manifest(tmp)}
        _write_json(tmp / "meta.json", meta)  # last: its presence means the rest is complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
        log.info("checkpoint saved: %s", final)
    _barrier(learner)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that `path` is a complete checkpoint (every file in its manifest, at its size); returns meta."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: meta.json is missing (interrupted save?)")
    try:
        meta = json.loads(meta_path.read_text())
        files: dict[str, dict | int] = meta["files"]
        if not {"step", "world_size"} <= meta.keys():
            raise KeyError("step/world_size")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: meta.json is corrupt ({err})") from None
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    wrong = []
    for name, entry in files.items():
        size = entry if isinstance(entry, int) else entry["bytes"]  # format 1: sizes only
        actual = (path / name).stat().st_size
        if actual != size:
            wrong.append(f"{name} ({actual} bytes, expected {size})")
        elif isinstance(entry, dict) and _sha256(path / name) != entry["sha256"]:
            wrong.append(f"{name} (its bytes changed since it was saved: SHA-256 differs)")
    if wrong:
        raise CheckpointError(f"checkpoint {path} is corrupt: truncated or altered {', '.join(wrong)}")
    return meta


def load_checkpoint(path: str | Path, learner: Learner) -> tuple[int, dict]:
    """Restore weights, optimizer state, RNG states and the optimizer-step counter into `learner` (on
    every rank).

    Returns (step, extra): the training step the checkpoint was saved at (a step may take several
    optimizer steps) and the caller's extra state. Raises CheckpointError on a missing, partial or
    corrupt checkpoint, or one saved with a different number of ranks.
    """
    path = Path(path)
    meta = verify_checkpoint(path)
    if meta["world_size"] != learner.world_size:
        raise CheckpointError(f"checkpoint {path} was saved by {meta['world_size']} learner rank(s) but this "
                              f"run has {learner.world_size}; resume with the same number of ranks, or "
                              f"start a new run from the weights in {path / 'hf'}")
    rng_path = path / "rng" / f"rank_{learner.rank}.pt"
    try:
        rng = torch.load(rng_path, weights_only=False)
        extra = torch.load(path / "extra.pt", weights_only=False)
    except Exception as err:  # torch.load raises several types on a damaged file
        raise CheckpointError(f"checkpoint {path}: unreadable {rng_path.name} or extra.pt ({err})") from err
    ds_dir = path / _DS_TAG
    try:
        load_path, _ = learner.engine.load_checkpoint(str(ds_dir), tag=_DS_TAG, load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: DeepSpeed could not load {ds_dir} ({err})") from err
    if load_path is None:
        raise CheckpointError(f"checkpoint {path}: DeepSpeed found no checkpoint under {ds_dir}")
    _set_rng_state(rng)
    step = int(meta["step"])
    learner.step = int(meta.get("optimizer_steps", step))
    log.info("checkpoint loaded: %s (step %d, %d optimizer steps)", path, step, learner.step)
    return step, extra


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`: the one `latest` names, else the highest complete
    `step_N` (temp dirs of interrupted saves are never returned); None when there is none."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if _STEP_DIR.match(candidate.name) and (candidate / "meta.json").is_file():
            return candidate
        log.warning("%s names %s, which is not a complete checkpoint; scanning %s", pointer, candidate, root)
    steps = sorted(((int(m.group(1)), p) for p in root.glob("step_*")
                    if (m := _STEP_DIR.match(p.name)) and (p / "meta.json").is_file()), reverse=True)
    return steps[0][1] if steps else None


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """The checkpoint `train.resume` names: one checkpoint (`.../step_N`) or a folder of them (its
    latest); `auto` is this run's own latest checkpoint if it has one (a requeued job), else a fresh
    start (None)."""
    if not resume:
        return None
    if resume == "auto":
        return _newest_intact(Path(out_dir) / "checkpoints")
    path = Path(resume)
    if (path / "meta.json").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"train.resume={resume}: no complete checkpoint there")
    return latest


def _newest_intact(root: Path) -> Path | None:
    """`resume=auto`'s checkpoint: the newest under `root` that verifies (a requeued job must not die
    on a save its kill tore, nor on a damaged file: it warns and takes the one before)."""
    steps = sorted(((int(m.group(1)), p) for p in root.glob("step_*") if (m := _STEP_DIR.match(p.name))),
                   reverse=True)
    for _, path in steps:
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            log.warning("resume=auto skips %s: %s", path, err)
    return None
