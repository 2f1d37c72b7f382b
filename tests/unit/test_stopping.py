"""The demo's Stopper: a lost cancellation is delivered again; an unwinding demo is left alone."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from quantship.local.stopping import Stopper

pytestmark = pytest.mark.looptime


async def test_a_swallowed_cancellation_is_delivered_again() -> None:
    """What anyio#1214 does to an httpx request: the first CancelledError never reaches the demo."""
    lost = asyncio.Event()

    async def demo() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.set()  # swallowed: the demo would go on for its whole run
        await asyncio.sleep(3600)

    task = asyncio.create_task(demo())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    Stopper(task, retry_s=1.0).stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lost.is_set()
    assert asyncio.get_running_loop().time() - started == pytest.approx(1.0)


async def test_an_unwinding_demo_is_not_cancelled_again() -> None:
    """Once the demo stops what it started, another cancellation would cut its cleanup short."""
    cleaned = asyncio.Event()
    stopper: Stopper

    async def demo() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopper.unwind()
            await asyncio.sleep(5)  # stopping servers and Prometheus takes a while
            cleaned.set()

    task = asyncio.create_task(demo())
    stopper = Stopper(task, retry_s=1.0)
    await asyncio.sleep(0)
    stopper.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


async def test_ctrl_c_reaches_the_stopper_instead_of_asyncio_runs_handler() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    Stopper(task).install([signal.SIGINT])
    try:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
