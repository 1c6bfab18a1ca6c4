"""The OpenAI-compatible proxy: an `openai`-client agent's episodes are recorded token for token."""

import asyncio
import json

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError

from rollout.chat import ChatFormat, format_tool_call
from rollout.demos import ScriptedEngine
from rollout.envs import get_env
from rollout.proxy import ProxyServer, ProxySettings
from rollout.types import ToolCall

KBSEARCH = get_env("kbsearch")
TOOLS = [t.to_json_schema() for t in KBSEARCH.tools]


class RecordingEngine:
    """Wraps an engine and records every prompt it was given and every generation it returned."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    async def generate(self, prompt_ids, sampling):
        gen = await self.inner.generate(list(prompt_ids), sampling)
        self.calls.append((list(prompt_ids), gen))
        return gen


async def serve(engine, tokenizer, **settings):
    finished = []

    async def on_end(episode):
        finished.append(episode)

    server = ProxyServer(engine.generate, tokenizer, ProxySettings(**settings), on_episode_end=on_end)
    url = await server.start()
    return server, url, finished


async def play(client: AsyncOpenAI, url: str, episode_id: str, task, turns: int, max_tokens=None) -> float:
    """An agent written against the plain `openai` client: tools, tool results, reward at the end."""
    env = KBSEARCH(task)
    messages = [{"role": "user", "content": env.reset()}]
    headers = {"X-Episode-Id": episode_id, "X-Group-Id": task.id}
    for turn in range(turns):
        response = await client.chat.completions.create(
            model="turnrl-policy", messages=messages, tools=TOOLS, extra_headers=headers,
            max_tokens=max_tokens[turn] if max_tokens else None)
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            messages.append({"role": "user", "content": "Call exactly one tool."})
            continue
        call = message.tool_calls[0]
        result = env.step(ToolCall(call.function.name, json.loads(call.function.arguments)))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result.observation})
        if result.done:
            break
    reward = 1.0 if env.verify() else 0.0
    async with httpx.AsyncClient(base_url=url) as http:
        (await http.post(f"/episodes/{episode_id}/finish", json={"reward": reward})).raise_for_status()
    return reward


def assert_recorded_exactly(traj, calls):
    """Each call's prompt is the trajectory so far and its generation sits there verbatim with its
    behaviour log-probs and version; the loss mask is 1 on exactly the generated tokens."""
    assert len(calls) == len(traj.turns)
    generated = set()
    for (prompt, gen), turn in zip(calls, traj.turns, strict=True):
        assert traj.token_ids[: len(prompt)] == prompt and turn.action_start == len(prompt)
        assert traj.token_ids[turn.action_start:turn.action_end] == gen.token_ids
        assert traj.logprobs[turn.action_start:turn.action_end] == gen.logprobs
        assert traj.versions[turn.action_start:turn.action_end] == [gen.version] * len(gen.token_ids)
        generated.update(range(turn.action_start, turn.action_end))
    assert [i for i, m in enumerate(traj.loss_mask) if m] == sorted(generated)
    assert len(traj.token_ids) == len(traj.loss_mask) == len(traj.logprobs) == len(traj.versions)
    assert all(v == -1 and lp == 0.0 for v, lp, m in zip(traj.versions, traj.logprobs, traj.loss_mask, strict=True)
               if not m)


def test_concurrent_openai_agent_episodes_on_the_hf_engine_are_recorded_token_for_token(tiny_model_dir,
                                                                                        tiny_tokenizer):
    from rollout.engines.hf import HFEngine

    async def main():
        engine = RecordingEngine(HFEngine(str(tiny_model_dir)))
        server, url, finished = await serve(engine, tiny_tokenizer, max_tokens_per_turn=12, max_total_tokens=2048)
        client = AsyncOpenAI(base_url=url, api_key="unused")
        tasks = [KBSEARCH.generate_task(seed=s, difficulty=2) for s in range(4)]
        # Turn 2 of every episode is cut at 3 tokens: it ends without eos, which joins as context.
        await asyncio.gather(*(play(client, url, f"ep-{i}", t, turns=3, max_tokens=[None, 3, None])
                               for i, t in enumerate(tasks)))
        await server.stop()
        return engine, server, finished

    engine, server, finished = asyncio.run(main())
    assert sorted(e.episode_id for e in finished) == [f"ep-{i}" for i in range(4)]
    assert server.stats.segments_split == 0 and server.stats.calls == 12
    for episode in finished:
        (traj,) = episode.trajectories  # every call extended the previous one: one sample
        mine = [(p, g) for p, g in engine.calls if traj.token_ids[: len(p) + len(g.token_ids)] == p + g.token_ids]
        assert_recorded_exactly(traj, mine)
        assert len(traj.turns) == 3 and traj.task_id == traj.group_id
        short = traj.turns[1]
        assert short.action_end - short.action_start == 3
        assert traj.token_ids[short.action_end] == tiny_tokenizer.eos_token_id  # closed as context


def test_tool_calls_come_back_in_openai_form_and_solve_the_task(tiny_tokenizer):
    task = KBSEARCH.generate_task(seed=11, difficulty=3)
    chat = ChatFormat(tiny_tokenizer, KBSEARCH.tools)
    expert = KBSEARCH.expert_solution(task)

    async def main():
        engine = RecordingEngine(ScriptedEngine(chat, [format_tool_call(c) for c in expert]))
        server, url, finished = await serve(engine, tiny_tokenizer, max_total_tokens=4096)
        reward = await play(AsyncOpenAI(base_url=url, api_key="unused"), url, "solve", task, turns=len(expert))
        await server.stop()
        return engine, finished, reward

    engine, finished, reward = asyncio.run(main())
    assert reward == 1.0
    (traj,) = finished[0].trajectories
    assert traj.success and traj.reward == 1.0 and not any(t.tool_error for t in traj.turns)
    assert_recorded_exactly(traj, engine.calls)
    # The first prompt is what the built-in agent loop would have given the engine.
    assert traj.token_ids[:traj.prompt_length] == chat.prompt_ids(KBSEARCH(task).reset())


def test_a_prompt_that_does_not_extend_the_episode_starts_a_new_sample(tiny_model_dir, tiny_tokenizer):
    from rollout.engines.hf import HFEngine

    async def main():
        engine = RecordingEngine(HFEngine(str(tiny_model_dir)))
        server, url, finished = await serve(engine, tiny_tokenizer, max_tokens_per_turn=8)
        client = AsyncOpenAI(base_url=url, api_key="unused")
        headers = {"X-Episode-Id": "edited"}
        messages = [{"role": "user", "content": "Where was Ada born?"}]
        first = await client.chat.completions.create(model="turnrl-policy", messages=messages, extra_headers=headers)
        # The agent rewrites its history: its own question changes, the reply is kept.
        edited = [{"role": "user", "content": "Where was Bob born?"},
                  first.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "Sure?"}]
        await client.chat.completions.create(model="turnrl-policy", messages=edited, extra_headers=headers)
        async with httpx.AsyncClient(base_url=url) as http:
            done = (await http.post("/episodes/edited/finish", json={"reward": 0.5})).json()
        await server.stop()
        return engine, server, finished, done

    engine, server, finished, done = asyncio.run(main())
    assert server.stats.segments_split == 1 and done["segments"] == 2
    first, second = finished[0].trajectories
    assert [t.info["segment"] for t in (first, second)] == [0, 1]
    assert all(t.reward == 0.5 and t.success for t in (first, second))
    assert_recorded_exactly(first, engine.calls[:1])
    assert_recorded_exactly(second, engine.calls[1:])
    # The new sample's prompt is the whole edited conversation, as context.
    assert second.prompt_length == len(engine.calls[1][0]) and sum(second.loss_mask[:second.prompt_length]) == 0


def test_malformed_and_unsupported_requests_get_clear_4xx_json_errors(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer, [])
    ok = {"model": "turnrl-policy", "messages": [{"role": "user", "content": "hi"}]}
    episode = {"X-Episode-Id": "e1"}

    async def main():
        engine = ScriptedEngine(chat, ["hello"] * 4)
        server, url, _ = await serve(engine, tiny_tokenizer, lock_sampling=True, max_total_tokens=64)
        answers = {}
        async with httpx.AsyncClient(base_url=url) as http:
            async def post(name, path, body, headers=episode, **kw):
                answers[name] = await http.post(path, json=body, headers=headers, **kw)

            await post("no_episode", "/chat/completions", ok, headers={})
            await post("unknown_model", "/chat/completions", {**ok, "model": "gpt-4o"})
            await post("n2", "/chat/completions", {**ok, "n": 2})
            await post("stream", "/chat/completions", {**ok, "stream": True})
            await post("no_messages", "/chat/completions", {**ok, "messages": []})
            await post("bad_role", "/chat/completions", {**ok, "messages": [{"role": "robot", "content": "x"}]})
            await post("temperature", "/chat/completions", {**ok, "temperature": 0.3})
            await post("too_long", "/chat/completions", {**ok, "messages": [{"role": "user", "content": "x " * 200}]})
            answers["not_json"] = await http.post("/chat/completions", content=b"{nope",
                                                  headers={**episode, "Content-Type": "application/json"})
            await post("finish_unknown", "/episodes/nobody/finish", {"reward": 1.0})
            await post("good", "/chat/completions", ok)
            await post("finish_no_reward", "/episodes/e1/finish", {"success": True})
            await post("finish", "/episodes/e1/finish", {"reward": 1.0})
            await post("finish_again", "/episodes/e1/finish", {"reward": 1.0})
            await post("after_finish", "/chat/completions", ok)
            answers["no_route"] = await http.get("/completions")
            answers["models"] = await http.get("/models")
        with pytest.raises(BadRequestError, match="X-Episode-Id"):
            await AsyncOpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(**ok)
        await server.stop()
        return answers

    answers = asyncio.run(main())
    expected = {"no_episode": (400, "X-Episode-Id"), "unknown_model": (404, "turnrl-policy"), "n2": (400, "n=1"),
                "stream": (400, "stream"), "no_messages": (400, "messages"), "bad_role": (400, "role"),
                "temperature": (400, "temperature=1.0"), "too_long": (400, "max_total_tokens"),
                "not_json": (400, "JSON"), "finish_unknown": (404, "nobody"), "finish_no_reward": (400, "reward"),
                "finish_again": (404, "already finished"), "after_finish": (409, "already finished"),
                "no_route": (404, "/v1/completions")}
    for name, (status, words) in expected.items():
        body = answers[name].json()
        assert answers[name].status_code == status, (name, body)
        assert words in body["error"]["message"] and body["error"]["type"] == "invalid_request_error", (name, body)
    assert answers["good"].status_code == 200 and answers["good"].json()["choices"][0]["message"]["content"] == "hello"
    assert answers["finish"].json() == {"episode_id": "e1", "segments": 1, "generated_tokens": len(chat.encode(
        "hello")) + 1}
    assert answers["models"].json()["data"][0]["id"] == "turnrl-policy"
