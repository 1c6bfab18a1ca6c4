"""Every experiment preset loads, and the GPU presets' split adds up to the nodes they name."""

import re
from pathlib import Path

import pytest

from rl.config import CONFIG_DIR, load_config

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_instantiates(name):
    cfg = load_config([f"+experiment={name}"])
    assert cfg.train.steps >= 1


@pytest.mark.parametrize("name", [p for p in PRESETS if p.startswith("qwen")])
def test_gpu_presets_use_exactly_the_gpus_of_their_allocation(name):
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    nodes, gpus_per_node = (int(x) for x in re.search(r"--nodes=(\d+) --gpus-per-node=(\d+)", text).groups())
    cfg = load_config([f"+experiment={name}"])
    rollout_gpus = cfg.rollout.num_workers * cfg.rollout.gpus_per_worker
    learner_gpus = cfg.train.learner_ranks * cfg.train.gpus_per_learner_rank
    assert rollout_gpus + learner_gpus == nodes * gpus_per_node
    assert cfg.rollout.gpus_per_worker == cfg.rollout.vllm.tensor_parallel_size
    assert cfg.model.dtype == "bfloat16" and Path(cfg.model.path).name.startswith("Qwen2.5")
