"""Admission control and a small worker pool for inference, kept off the event loop.

Inference is CPU- (or GPU-) bound and takes tens to hundreds of milliseconds, so running it on the
event loop would stall every other request, /health included. Requests are therefore handed to a
dedicated thread pool. The pool is fronted by a *bounded* admission count: at most
``workers + max_queue`` requests are running or waiting at once, and a request past that bound is
refused at once with :class:`QueueFull` (the app answers 503 with ``Retry-After``) instead of piling
up memory and latency for everyone.

The admission counter is only touched from the event loop thread, so it needs no lock; the
counters the worker threads update share one.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """Raised by :meth:`InferenceRunner.submit` when the bounded queue is full."""

    def __init__(self, retry_after: int, capacity: int) -> None:
        super().__init__(
            f"the server is busy ({capacity} requests already running or queued); "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after
        self.capacity = capacity


@dataclass
class RunnerStats:
    """A snapshot of the runner for /health and logs."""

    workers: int
    max_queue: int
    running: int
    waiting: int
    completed: int
    rejected: int
    mean_service_ms: float


class InferenceRunner:
    """Runs blocking callables on ``workers`` threads behind a queue of at most ``max_queue``."""

    def __init__(self, workers: int = 1, max_queue: int = 8) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="steelscan-infer")
        self._admitted = 0  # running + waiting; event-loop thread only
        self._lock = threading.Lock()  # guards the counters that worker threads update
        self._running = 0
        self._completed = 0
        self._rejected = 0
        # Exponential moving average of the time one job occupies a worker; seeds Retry-After.
        self._service_s = 0.2

    @property
    def capacity(self) -> int:
        return self.workers + self.max_queue

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog shared by the workers; at least 1."""
        backlog = self._admitted / self.workers
        return max(1, math.ceil(backlog * self._service_s))

    def check_admission(self) -> None:
        """Raise :class:`QueueFull` now if :meth:`submit` would refuse; lets callers skip work."""
        if self._admitted >= self.capacity:
            self._rejected += 1
            raise QueueFull(self.retry_after(), self.capacity)

    async def submit(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on a worker thread, or raise :class:`QueueFull` at once if full."""
        self.check_admission()
        self._admitted += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._timed, fn, args)
        finally:
            self._admitted -= 1

    def _timed(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        with self._lock:
            self._running += 1
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - t0
            with self._lock:
                self._service_s = 0.8 * self._service_s + 0.2 * elapsed
                self._running -= 1
                self._completed += 1

    def stats(self) -> RunnerStats:
        running = min(self._running, self._admitted)
        return RunnerStats(
            workers=self.workers,
            max_queue=self.max_queue,
            running=running,
            waiting=max(0, self._admitted - running),
            completed=self._completed,
            rejected=self._rejected,
            mean_service_ms=round(self._service_s * 1000.0, 3),
        )

    def shutdown(self) -> None:
        """Stop accepting work; running jobs finish, waiting ones are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
