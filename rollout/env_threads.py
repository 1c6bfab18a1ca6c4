"""The threads environments run in: a fixed number of workers, none of which a hung call can keep.

Environment code is ordinary blocking Python (a simulator, a JVM behind a socket, an HTTP call), so
episodes run it off the event loop. `concurrent.futures.ThreadPoolExecutor` does not fit: a call
that never returns keeps its thread for good (eight hung tools stall every other episode), the time
a call waits for a free thread counts against its timeout, and the interpreter joins its threads at
exit (a sleeping tool holds up shutdown). Here a call's timeout starts when a thread picks it up; a
call that times out is abandoned, and a new thread takes its place so the pool keeps its size; the
threads are daemons, so neither `shutdown` nor the interpreter's exit waits for an abandoned call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class EnvCallTimeout(TimeoutError):
    """An environment call ran past its timeout (it is abandoned, its thread replaced)."""


@dataclass
class _Call:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future = field(init=False)
    result: asyncio.Future = field(init=False)
    # Under the pool's lock: the caller gave up on it (the thread running it leaves the pool when it
    # returns; a queued one is skipped), or the thread finished it.
    abandoned: bool = False
    running: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        self.started = self.loop.create_future()
        self.result = self.loop.create_future()


def _settle(future: asyncio.Future, value: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


class EnvThreads:
    """`size` daemon threads that run environment calls for the episodes of one event loop."""

    def __init__(self, size: int, name: str = "env") -> None:
        if size < 1:
            raise ValueError(f"tool threads must be >= 1, got {size}")
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self.abandoned = 0  # calls given up on so far (each cost a replacement thread)
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            self._started += 1
            index = self._started
        threading.Thread(target=self._work, name=f"{self.name}-{index}", daemon=True).start()

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            with self._lock:
                if call.abandoned:  # cancelled while it waited for a thread
                    continue
                call.running = True
            try:
                call.loop.call_soon_threadsafe(_settle, call.started)
                try:
                    value, error = call.fn(), None
                except BaseException as err:  # handed to the awaiting episode, which decides
                    value, error = None, err
                call.loop.call_soon_threadsafe(_settle, call.result, value, error)
            except RuntimeError:  # the event loop is closed: nobody waits for this any more
                pass
            with self._lock:
                call.finished = True
                if call.abandoned:
                    return  # its replacement already runs

    async def run(self, fn: Callable[[], Any], timeout_s: float | None) -> Any:
        """`fn()` in one of the threads; its result, or what it raised. Raises EnvCallTimeout when it
        runs longer than `timeout_s` (counted from when a thread starts it; None: no limit)."""
        if self._closed:
            raise RuntimeError("the environment threads are shut down")
        call = _Call(fn, asyncio.get_running_loop())
        self._queue.put(call)
        try:
            await call.started
            return await asyncio.wait_for(asyncio.shield(call.result), timeout_s)
        except TimeoutError:
            self._abandon(call)
            raise EnvCallTimeout(f"no answer within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._abandon(call)
            raise

    def _abandon(self, call: _Call) -> None:
        """Give up on `call`: skipped if still queued; if running, a new thread takes its place."""
        with self._lock:
            if call.finished or call.abandoned:
                return
            call.abandoned = True
            running = call.running
            if running:
                self.abandoned += 1
        # What a given-up call ends with is nobody's any more; read it so asyncio does not warn.
        call.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        if running and not self._closed:
            self._start_thread()

    def shutdown(self) -> None:
        """Stop the idle threads; calls still running are left to finish (or not) on their own."""
        self._closed = True
        for _ in range(self.size):
            self._queue.put(None)
