import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    """A random 2-layer Qwen2 with a 64-token vocabulary: enough for learner and checkpoint tests."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("qwen2") / "tiny"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (bound to localhost) for the session: training runs find it running and leave
    it up, instead of starting and stopping their own."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_store():
    """Write `n` kbsearch-like trajectory records (rollout/store.py) to a JSONL store: about
    `success_rate` of them successful, and the final observation says whether the answer was right."""
    from rollout.store import TrajectoryStore

    def write(path: Path, n: int, seed: int, step: int, success_rate: float = 0.4) -> Path:
        rng = random.Random(seed)
        records = []
        for i in range(n):
            success = rng.random() < success_rate
            city = rng.choice(["Lyon", "Oslo", "Lima", "Kyiv"])
            final = "Correct answer." if success else "Wrong answer."
            records.append({"source": "train", "step": step, "success": success,
                            "task": {"id": f"task-{seed}-{i}", "instruction": f"Where was person {i} born?",
                                     "difficulty": 1 + i % 2},
                            "turns": [{"action": f"open(person {i})", "observation": f"born in {city}"},
                                      {"action": f"answer({city})", "observation": final}],
                            "text": f"... {final}"})
        TrajectoryStore(path, resume_step=10**9).write(records)
        return path

    return write
