"""rollout/env_threads.py: hung environment calls cost only themselves."""

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from rollout.env_threads import EnvCallTimeout, EnvThreads


def test_a_call_returns_its_value_or_raises_its_error():
    async def main():
        threads = EnvThreads(2)
        assert await threads.run(lambda: 41 + 1, timeout_s=5) == 42
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda: 1 / 0, timeout_s=5)
        threads.shutdown()

    asyncio.run(main())


def test_hung_calls_time_out_and_their_threads_are_replaced():
    release = threading.Event()

    async def main():
        threads = EnvThreads(2)
        hung = [asyncio.create_task(threads.run(release.wait, timeout_s=0.2)) for _ in range(2)]
        for task in hung:
            with pytest.raises(EnvCallTimeout):
                await task
        assert threads.abandoned == 2
        # Both original threads are still stuck; the replacements answer.
        assert await asyncio.gather(*(threads.run(lambda i=i: i, timeout_s=5) for i in range(4))) == [0, 1, 2, 3]
        threads.shutdown()

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_the_timeout_counts_from_when_a_thread_starts_the_call_not_from_the_queue():
    """One thread, two calls of 1 s each under a 1.8 s timeout: the second waits 1 s for the thread,
    then runs 1 s; with the queue time counted it would time out."""

    async def main():
        threads = EnvThreads(1)
        results = await asyncio.gather(*(threads.run(lambda i=i: (time.sleep(1.0), i)[1], timeout_s=1.8)
                                         for i in range(2)))
        threads.shutdown()
        return results

    assert asyncio.run(main()) == [0, 1]


def test_a_call_cancelled_while_queued_never_runs():
    ran = []
    release = threading.Event()

    async def main():
        threads = EnvThreads(1)
        busy = asyncio.create_task(threads.run(release.wait, timeout_s=5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(threads.run(lambda: ran.append(1), timeout_s=5))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await busy
        assert await threads.run(lambda: "next", timeout_s=5) == "next"
        threads.shutdown()

    asyncio.run(main())
    assert ran == []


SCRIPT = """
import asyncio, threading
from rollout.env_threads import EnvCallTimeout, EnvThreads

async def main():
    threads = EnvThreads(2)
    try:
        await threads.run(threading.Event().wait, timeout_s=0.2)  # never returns
    except EnvCallTimeout:
        print("timed out")
    threads.shutdown()

asyncio.run(main())
"""


def test_shutdown_and_exit_do_not_wait_for_a_call_that_never_returns():
    # The call blocks forever: the process either exits on its own or hangs (the guard's timeout).
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "timed out"
