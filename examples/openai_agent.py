"""An agent written with the plain `openai` client, trained by turnrl through its proxy.

It plays turnrl's kbsearch tasks through the Env API (tools as OpenAI function schemas, tool
results as `tool` messages) and reports the environment's verdict as the reward. Nothing in it is
turnrl-specific except two headers on each call (`X-Episode-Id`, `X-Group-Id`) and the final
`POST /v1/episodes/{id}/finish` with the reward.

Launched by the trainer (which sets OPENAI_BASE_URL, OPENAI_MODEL and TURNRL_GROUP_SIZE):

    turnrl train rollout.source=proxy \
        rollout.proxy.agent_command="python examples/openai_agent.py"

or on its own against a running endpoint:

    python examples/openai_agent.py --base-url http://127.0.0.1:8000/v1 --groups 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import uuid

from openai import AsyncOpenAI

from rollout.env import first_message
from rollout.envs import get_env
from rollout.types import ToolCall

log = logging.getLogger("openai_agent")


async def play_episode(client: AsyncOpenAI, model: str, env_cls, task, max_turns: int) -> float:
    """One episode: the model calls tools until the environment is done; returns the reward."""
    episode_id = uuid.uuid4().hex
    headers = {"X-Episode-Id": episode_id, "X-Group-Id": task.id}
    tools = [t.to_json_schema() for t in env_cls.tools]
    env = env_cls(task)
    try:
        messages = [{"role": "user", "content": first_message(env, task)}]
        for _ in range(max_turns):
            response = await client.chat.completions.create(model=model, messages=messages, tools=tools,
                                                            extra_headers=headers)
            message = response.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                messages.append({"role": "user", "content": "Call exactly one of the tools."})
                continue
            call = message.tool_calls[0]
            try:
                arguments = json.loads(call.function.arguments)
            except json.JSONDecodeError:
                arguments = {}
            result = await asyncio.to_thread(env.step, ToolCall(call.function.name, arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.observation})
            if result.done:
                break
        reward = 1.0 if env.verify() else 0.0
    finally:
        env.close()
    # The finish endpoint sits beside the chat API; the openai client posts to it with its own settings.
    await client.post(f"/episodes/{episode_id}/finish", body={"reward": reward}, cast_to=dict)
    return reward


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "turnrl-policy"))
    parser.add_argument("--env", default="kbsearch")
    parser.add_argument("--group-size", type=int, default=int(os.environ.get("TURNRL_GROUP_SIZE", "4")))
    parser.add_argument("--concurrent-groups", type=int, default=4, help="groups (tasks) played at once")
    parser.add_argument("--groups", type=int, default=0, help="groups to play in all; 0: until stopped")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s agent: %(message)s")  # warnings from libraries, not every request
    log.setLevel(logging.INFO)
    env_cls = get_env(args.env)

    client = AsyncOpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"), timeout=3600)
    rng = random.Random(args.seed)
    played, rewards = 0, []

    async def worker() -> None:
        nonlocal played
        while not args.groups or played < args.groups:
            played += 1
            # Training seeds stay below the held-out offset (turnrl's env.eval_seed_offset).
            task = env_cls.generate_task(rng.randrange(10_000_000), rng.choice(env_cls.difficulties[:3]))
            group = await asyncio.gather(*(play_episode(client, args.model, env_cls, task, args.max_turns)
                                           for _ in range(args.group_size)))
            rewards.extend(group)
            log.info("task %s: rewards %s (mean so far %.3f over %d episodes)", task.id, group,
                     sum(rewards) / len(rewards), len(rewards))

    await asyncio.gather(*(worker() for _ in range(args.concurrent_groups)))


if __name__ == "__main__":
    asyncio.run(main())
