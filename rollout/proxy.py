"""An OpenAI-compatible chat-completions endpoint in front of turnrl's engines: bring your own agent.

An agent written with the plain `openai` client, pointed at this server, becomes a rollout
source. Endpoints (under `/v1`):

- `POST /v1/chat/completions`: messages, tools, temperature, top_p, max_tokens (or
  max_completion_tokens), seed, n=1; tool calls come back in OpenAI `tool_calls` form, parsed
  from the model's text by turnrl's own parser (`rollout.chat.parse_action`).
- `GET /v1/models`: the one model served.
- `POST /v1/episodes/{episode_id}/finish` with `{"reward": float, "success": bool?}`: ends the
  episode; its recorded segments become `Trajectory`s (rollout/proxy_episodes.py).

Every chat call names its episode in the `X-Episode-Id` header, and may name its GRPO group in
`X-Group-Id` (the task: episodes of one task are compared with each other). Headers, not the
`user` field or extra body keys, so that the request body stays a plain OpenAI request that any
agent framework may fill as it likes (several set `user` themselves); the `openai` client sends
them with `default_headers=` or `extra_headers=`. Errors are JSON in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with a 4xx status for a bad request.

FastAPI (on uvicorn, in the caller's event loop) rather than aiohttp: the request schema below is
validated by pydantic, which names the offending field in every 4xx for free, and the server
shares the trainer's event loop so calls reach the rollout workers without a thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from rollout.chat import parse_action
from rollout.engines.base import Generation, SamplingConfig
from rollout.proxy_episodes import EpisodeRecorder, FinishedEpisode, PromptRenderer
from rollout.types import FinishReason

log = logging.getLogger(__name__)

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


@dataclass
class ProxySettings:
    model_name: str = "turnrl-policy"
    temperature: float = 1.0  # used when a request sets none
    top_p: float = 1.0
    # Training: the learner recomputes log-probs at this temperature and top_p, so a request asking
    # for other values is refused rather than silently trained with mismatched behaviour log-probs.
    lock_sampling: bool = False
    max_tokens_per_turn: int = 64  # when a request sets no max_tokens (and its cap)
    max_total_tokens: int = 1024  # prompt + generation, per call: the context budget
    episode_timeout_s: float = 600.0


class ProxyError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# The request schema: extra keys are ignored (clients send many), known ones are checked.
class _Function(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class _ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: _Function


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def for_template(self) -> dict:
        """The message as chat templates take it (text content, tool-call arguments as given)."""
        content = self.content
        if isinstance(content, list):  # content parts: only text is supported
            if any(part.get("type") != "text" for part in content):
                raise ProxyError(400, "only text content parts are supported", "messages")
            content = "".join(part.get("text", "") for part in content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.role == "assistant":
            out["content"] = content or None
            if self.tool_calls:
                out["tool_calls"] = [{"type": "function", "function": c.function.model_dump()} for c in self.tool_calls]
        return out


class _ToolSpec(BaseModel):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[_Message] = Field(min_length=1)
    tools: list[_ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None


class FinishRequest(BaseModel):
    reward: float
    success: bool | None = None  # default: reward > 0
    finish_reason: FinishReason = FinishReason.DONE


def _refuse_unsupported(req: ChatRequest, settings: ProxySettings) -> None:
    for param, bad, why in [
        ("n", req.n != 1, "only n=1 is supported; make one call per sample"),
        ("stream", req.stream, "streaming is not supported; call with stream=false"),
        ("stop", bool(req.stop), "stop strings are not supported (generation stops at the end of the turn)"),
        ("tool_choice", req.tool_choice not in (None, "auto"), "only tool_choice='auto' is supported"),
    ]:
        if bad:
            raise ProxyError(400, why, param, "unsupported_parameter")
    if settings.lock_sampling:
        for param, value, fixed in [("temperature", req.temperature, settings.temperature),
                                    ("top_p", req.top_p, settings.top_p)]:
            if value is not None and abs(value - fixed) > 1e-6:
                raise ProxyError(400, f"this endpoint trains a policy sampled at {param}={fixed} (rollout.{param}); "
                                      f"omit {param} or set it to {fixed}", param, "unsupported_value")


def _openai_message(text: str, finish: str) -> tuple[dict, str, bool]:
    """(OpenAI assistant message, finish_reason, tool_error) for generated `text`."""
    parsed = parse_action(text)
    if parsed.call is None:
        return {"role": "assistant", "content": text}, finish, "<tool_call>" in text
    call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": parsed.call.name, "arguments": json.dumps(parsed.call.arguments)}}
    content = _TOOL_CALL_BLOCK.sub("", text).strip() or None
    return {"role": "assistant", "content": content, "tool_calls": [call]}, "tool_calls", False


class ProxyServer:
    """The endpoint (see the module doc) over `generate(prompt_ids, sampling) -> Generation`.

    `on_episode_start(episode_id, group_key)` is awaited before an episode's first generation (the
    trainer admits it: staleness-bounded, like its own groups); `on_episode_end(FinishedEpisode)`
    gets every finished or expired episode.
    """

    def __init__(self, generate: Callable[[list[int], SamplingConfig], Awaitable[Generation]], tokenizer,
                 settings: ProxySettings | None = None,
                 on_episode_start: Callable[[str, str], Awaitable[None]] | None = None,
                 on_episode_end: Callable[[FinishedEpisode], Awaitable[None]] | None = None) -> None:
        self.generate = generate
        self.settings = settings or ProxySettings()
        self.renderer = PromptRenderer(tokenizer)
        self.tokenizer = tokenizer
        self.recorder = EpisodeRecorder()
        self.on_episode_start = on_episode_start
        self.on_episode_end = on_episode_end
        self.app = self._build_app()
        self._server = None
        self._serving: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None

    @property
    def stats(self):
        return self.recorder.stats

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="turnrl proxy", docs_url=None, redoc_url=None, openapi_url=None)

        def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
            if status < 500:
                self.recorder.stats.rejected_requests += 1
            kind = "invalid_request_error" if status < 500 else "server_error"
            return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)

        @app.exception_handler(ProxyError)
        async def _proxy_error(request: Request, err: ProxyError) -> JSONResponse:
            return error(err.status, err.message, err.param, err.code)

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if p != "body")
            if not where:  # the body as a whole
                return error(400, f"the request body must be a JSON object: {first['msg']}", None, "invalid_json")
            return error(400, f"invalid request: {where}: {first['msg']}", where, "invalid_request")

        @app.exception_handler(HTTPException)
        async def _http(request: Request, err: HTTPException) -> JSONResponse:
            return error(err.status_code, f"{err.detail}: {request.method} {request.url.path}")

        @app.exception_handler(Exception)
        async def _failed(request: Request, err: Exception) -> JSONResponse:  # the engine or the trainer failed
            log.exception("proxy request %s failed", request.url.path)
            return error(500, f"{type(err).__name__}: {err}")

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "created": 0,
                                                "owned_by": "turnrl"}]}

        @app.post("/v1/chat/completions")
        async def chat(req: ChatRequest, x_episode_id: str | None = Header(None),
                       x_group_id: str | None = Header(None)) -> dict:
            return await self.complete(req, x_episode_id, x_group_id)

        @app.post("/v1/episodes/{episode_id}/finish")
        async def finish(episode_id: str, body: FinishRequest) -> dict:
            return await self.finish(episode_id, body)

        return app

    async def complete(self, req: ChatRequest, episode_id: str | None, group_key: str | None) -> dict:
        """One chat completion, recorded into its episode."""
        s = self.settings
        if not episode_id:
            raise ProxyError(400, "every chat completion needs an X-Episode-Id header naming its episode (and "
                                  "optionally X-Group-Id naming its task); e.g. OpenAI(default_headers=...)",
                             "X-Episode-Id", "missing_episode_id")
        if req.model != s.model_name:
            raise ProxyError(404, f"model {req.model!r} is not served here; use {s.model_name!r}", "model",
                             "model_not_found")
        _refuse_unsupported(req, s)
        messages = [m.for_template() for m in req.messages]
        tools = [t.model_dump() for t in req.tools] if req.tools else None
        try:
            episode = self.recorder.open(episode_id, group_key or "default")
        except KeyError as err:
            raise ProxyError(409, err.args[0], "X-Episode-Id", "episode_finished") from None
        async with episode.lock:
            prompt_ids = self.renderer.render(messages, tools, episode.generations)
            requested = req.max_completion_tokens or req.max_tokens or s.max_tokens_per_turn
            budget = min(requested, s.max_tokens_per_turn, s.max_total_tokens - len(prompt_ids))
            if budget <= 0:
                raise ProxyError(400, f"the prompt is {len(prompt_ids)} tokens; with the reply it must stay under "
                                      f"{s.max_total_tokens} (rollout.max_total_tokens)", "messages",
                                 "context_length_exceeded")
            if not episode.admitted:
                if self.on_episode_start is not None:
                    await self.on_episode_start(episode.id, episode.group_key)
                episode.admitted = True
            sampling = SamplingConfig(temperature=s.temperature if req.temperature is None else req.temperature,
                                      top_p=s.top_p if req.top_p is None else req.top_p, max_tokens=budget,
                                      stop_token_ids=[self.renderer.eos_id], seed=req.seed)
            gen = await self.generate(prompt_ids, sampling)
            text = self.tokenizer.decode([t for t in gen.token_ids if t != self.renderer.eos_id],
                                         skip_special_tokens=False)
            message, finish, tool_error = _openai_message(text, "stop" if gen.finish_reason == "stop" else "length")
            segment, split = episode.segment_for(prompt_ids)
            episode.record(segment, prompt_ids, gen, message, tool_error, self.renderer.eos_id)
        stats = self.recorder.stats
        stats.calls += 1
        stats.segments_split += split
        stats.generated_tokens += len(gen.token_ids)
        n_gen = len(gen.token_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": s.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n_gen,
                          "total_tokens": len(prompt_ids) + n_gen}}

    async def finish(self, episode_id: str, body: FinishRequest) -> dict:
        """End an episode with the agent's reward; hands it to `on_episode_end`."""
        success = body.reward > 0 if body.success is None else body.success
        episode = self.recorder.episodes.get(episode_id)
        if episode is not None:
            async with episode.lock:  # a call still in flight is recorded first
                pass
        try:
            done = self.recorder.finish(episode_id, body.reward, success, body.finish_reason)
        except KeyError as err:
            raise ProxyError(404, err.args[0], "episode_id", "episode_not_found") from None
        if self.on_episode_end is not None:
            await self.on_episode_end(done)
        return {"episode_id": episode_id, "segments": len(done.trajectories),
                "generated_tokens": sum(t.num_generated_tokens for t in done.trajectories)}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.settings.episode_timeout_s / 4))
            for episode in self.recorder.expire(self.settings.episode_timeout_s):
                log.warning("proxy episode %s had no call or finish for %.0f s; dropped", episode.episode_id,
                            self.settings.episode_timeout_s)
                if self.on_episode_end is not None:
                    await self.on_episode_end(episode)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in this event loop; returns the base URL (`http://host:port/v1`). Port 0: a free one."""
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # the trainer owns SIGINT/SIGTERM, not the endpoint
                yield

        # Bound here, not by uvicorn, which answers a taken port with sys.exit.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            sock.close()
            raise OSError(f"the proxy cannot listen on {host}:{port} (rollout.proxy.host/port): {err}") from err
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]), name="proxy-server")
        while not self._server.started:
            if self._serving.done():
                await self._serving
                raise RuntimeError(f"the proxy stopped while starting on {host}:{port}")
            await asyncio.sleep(0.01)
        self._sweeper = asyncio.create_task(self._sweep(), name="proxy-sweeper")
        url = f"http://{host}:{sock.getsockname()[1]}/v1"
        log.info("OpenAI-compatible proxy serving %s at %s", self.settings.model_name, url)
        return url

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.should_exit = True
            await asyncio.gather(self._serving, return_exceptions=True)
