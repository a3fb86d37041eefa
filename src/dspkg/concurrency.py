"""Bounded concurrency for many requests, and the one bridge from sync to async.

:class:`BoundedTasks` keeps at most ``limit`` coroutines in flight; spawning waits
for a free slot, which gives natural back-pressure to whatever produces the work.
The first failure cancels the rest and is raised as itself (not as an
``ExceptionGroup``), so callers see one of our one-line errors. It is used as
``async with BoundedTasks(n) as tasks:``, which waits for every task when the block
ends and cancels (and awaits) them all when it ends with an error: no task outlives
its block, whatever happens.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BoundedTasks:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._error: BaseException | None = None

    async def __aenter__(self) -> BoundedTasks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.join()
        else:
            await self.cancel()

    async def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` once a slot is free; raise at once if an earlier task failed."""
        self._check(coro)
        await self._slots.acquire()
        try:
            self._check(coro)
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _check(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._error is not None:
            coro.close()
            raise self._error

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._error is None:
            self._error = error
            for other in self._tasks:
                other.cancel()

    async def join(self) -> None:
        """Wait for every task; raise the first failure."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._error is not None:
            raise self._error

    async def cancel(self) -> None:
        """Cancel every task and wait until all have finished."""
        for task in self._tasks:
            task.cancel()
        while self._tasks:
            await asyncio.wait(set(self._tasks))


async def in_thread(executor: Executor, call: Callable[[], T]) -> T:
    """``call()`` in one of ``executor``'s threads; when the caller is cancelled meanwhile,
    the call is waited for before the cancellation goes on (what it changes, such as
    files it creates, is then settled for the caller's cleanup)."""
    future = asyncio.get_running_loop().run_in_executor(executor, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait([future])
        raise


def _settle_io_threads() -> None:
    """Give obstore's I/O threads a moment to finish their last task before exit.

    Its Rust runtime is never shut down; a worker still dropping its last Python
    reference when interpreter finalization starts aborts the process (SIGABRT,
    about one short-lived process in six here). Measured: 10 ms at exit removes it.
    """
    time.sleep(0.02)


@functools.cache
def _register_settle() -> None:
    atexit.register(_settle_io_threads)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even where an event loop is running.

    Notebooks run an event loop in the main thread; there the coroutine runs on a
    fresh loop in a helper thread instead.
    """
    _register_settle()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_boxed(coro)).value
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _boxed(coro)).result().value


class _Box(Generic[T]):
    """A result that ``repr`` does not walk. asyncio.run formats its task's repr, result
    included, each time it checks the SIGINT handler (Python 3.11): for a manifest of a
    million files that was seconds of string building, twice per call."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<result>"


async def _boxed(coro: Coroutine[Any, Any, T]) -> _Box[T]:
    return _Box(await coro)


class LoopThread:
    """A long-lived event loop in a daemon thread, for fronts whose calls arrive from many
    threads (FUSE callbacks, a reader's clients) and whose work outlives each call
    (read-ahead keeps going after the read that started it returns).

    :func:`run_sync` is the bridge for one call that runs to completion; this is the
    bridge for a service. ``call`` blocks the calling thread until the coroutine is done
    on the loop; ``spawn`` starts one and returns at once.
    """

    def __init__(self, name: str = "dspkg-loop") -> None:
        _register_settle()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (never from the loop itself)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and wait for its thread."""
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
