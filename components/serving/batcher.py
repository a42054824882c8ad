"""Gathers the clauses of concurrent requests for a few milliseconds and scores them in one
length-sorted pass, then hands each request its rows.

- Bounded: at most `max_queued` clauses wait; beyond that `score` raises Overloaded at
  once (the server answers 503 with Retry-After) instead of queueing without end.
- Isolated: if a shared pass fails, each request in it is scored alone, so only the
  request that broke it fails.
- A request that is cancelled while waiting (its client went away, or its deadline
  passed) is dropped from the queue and costs nothing more.
"""
from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Overloaded(Exception):
    """More clauses are waiting than the server takes on."""


class Batcher:
    def __init__(self, score_fn, window_ms: float, max_rows: int, max_queued: int = 4096, on_pass=None,
                 executor: ThreadPoolExecutor | None = None):
        self.score_fn = score_fn
        self.window = window_ms / 1000
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.on_pass = on_pass  # called with the number of clauses of each scoring pass
        self.jobs: collections.deque = collections.deque()
        self.queued = 0  # clauses waiting
        self.wakeup: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # One scoring thread: torch already spreads one pass over the cores.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="tosguard-score")
        self.passes = 0  # scoring passes run, for tests and metrics

    def _start(self, loop) -> None:
        self.loop = loop
        self.jobs.clear()
        self.queued = 0
        self.wakeup = asyncio.Event()
        self.worker = loop.create_task(self._run())

    async def score(self, clauses: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        # The queue and its worker belong to one event loop; start them on first use in each.
        if self.loop is not loop or self.worker is None or self.worker.done():
            self._start(loop)
        if self.queued + len(clauses) > self.max_queued and self.queued:
            raise Overloaded(f"{self.queued} clauses are already waiting to be scored")
        future = loop.create_future()
        self.jobs.append((clauses, future))
        self.queued += len(clauses)
        self.wakeup.set()
        return await future  # cancelling this drops the job: the worker skips done futures

    def _take(self) -> list:
        """Jobs for one pass, skipping those whose requests are gone."""
        taken, rows = [], 0
        while self.jobs and rows < self.max_rows:
            clauses, future = self.jobs[0]
            if future.done():  # cancelled while waiting
                self.jobs.popleft()
                self.queued -= len(clauses)
                continue
            if taken and rows + len(clauses) > self.max_rows:
                break
            self.jobs.popleft()
            self.queued -= len(clauses)
            taken.append((clauses, future))
            rows += len(clauses)
        return taken

    async def _score(self, clauses: list[str]) -> np.ndarray:
        return await self.loop.run_in_executor(self.executor, self.score_fn, clauses)

    async def _run(self):
        while True:
            if not self.jobs:
                self.wakeup.clear()
                await self.wakeup.wait()
            # Requests that arrive while a pass runs share the next one by themselves; a
            # window (off by default) also makes requests arriving at an idle scorer wait
            # for company.
            if sum(len(c) for c, _ in self.jobs) < self.max_rows:
                await asyncio.sleep(self.window)
            jobs = self._take()
            if not jobs:
                continue
            clauses = [c for job, _ in jobs for c in job]
            self.passes += 1
            if self.on_pass:
                self.on_pass(len(clauses))
            try:
                scores = await self._score(clauses)
            except Exception as exc:
                if len(jobs) == 1:
                    if not jobs[0][1].done():
                        jobs[0][1].set_exception(exc)
                    continue
                # One request's clauses broke the shared pass: score each request alone,
                # so only the culprit fails.
                for job, future in jobs:
                    if future.done():
                        continue
                    try:
                        alone = await self._score(job)
                    except Exception as single:
                        if not future.done():
                            future.set_exception(single)
                    else:
                        if not future.done():
                            future.set_result(alone)
                continue
            offset = 0
            for job, future in jobs:
                if not future.done():
                    future.set_result(scores[offset : offset + len(job)])
                offset += len(job)
