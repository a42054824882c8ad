"""Gathers the clauses of concurrent requests for a few milliseconds and scores them in one
length-sorted pass, then hands each request its rows."""
from __future__ import annotations

import asyncio

import numpy as np


class Batcher:
    """Collects clauses from concurrent requests for a few milliseconds, scores them in one
    length-sorted pass, and hands each request its rows."""

    def __init__(self, score_fn, window_ms: float, max_rows: int):
        self.score_fn = score_fn
        self.window = window_ms / 1000
        self.max_rows = max_rows
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.passes = 0  # scoring passes run, for tests and metrics

    async def score(self, clauses: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        # The queue and its worker belong to one event loop; start them on first use in each.
        if self.loop is not loop or self.worker is None or self.worker.done():
            self.loop = loop
            self.queue = asyncio.Queue()
            self.worker = loop.create_task(self._run())
        future = loop.create_future()
        await self.queue.put((clauses, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            rows = len(jobs[0][0])
            deadline = loop.time() + self.window
            while rows < self.max_rows:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                rows += len(job[0])
            clauses = [c for job, _ in jobs for c in job]
            self.passes += 1
            try:
                scores = await loop.run_in_executor(None, self.score_fn, clauses)
            except Exception as exc:
                if len(jobs) == 1:
                    if not jobs[0][1].done():
                        jobs[0][1].set_exception(exc)
                    continue
                # One request's clauses can break a shared pass: score each request alone,
                # so only the culprit fails.
                for job, future in jobs:
                    try:
                        alone = await loop.run_in_executor(None, self.score_fn, job)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(alone)
                continue
            offset = 0
            for job, future in jobs:
                if not future.done():
                    future.set_result(scores[offset : offset + len(job)])
                offset += len(job)
