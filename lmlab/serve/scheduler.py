"""Continuous batching: one thread owns the model and drives the engine's step-level API.

    asyncio handlers --submit/cancel--> [waiting deque] --admit--> engine batch --step()--> events
          ^                                                                                  |
          +------------------- job.out (asyncio.Queue, via call_soon_threadsafe) <-----------+

Between two steps the scheduler takes in what happened meanwhile: cancellations (a client that
went away), time-outs, and newcomers, admitted while the batch has rows free (a job of n samples
takes n rows). One `batch.step()` prefills the newcomers and decodes one token for every running
row, so a new request waits at most one step, and a finished row leaves at once. Back-pressure:
past `max_queue` waiting jobs, `submit` refuses with 429 and a Retry-After.

A request the engine refuses (its handle carries an error) fails alone. If a step itself raises
(a bug, out of memory), the rows of that batch fail with 500 and a fresh batch takes over, so the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmlab.model.engine import Request
from lmlab.serve.errors import ApiError
from lmlab.serve.metrics import Metrics
from lmlab.serve.params import Prepared

log = logging.getLogger("lmlab.serve")
_ids = itertools.count()


@dataclass
class Job:
    """One engine request in flight. `out` receives, in the event loop's thread:
    ("event", Event) per generated token or text piece, ("done", Generation) per finished sample,
    ("finished", handle) once every sample is done, or ("error", ApiError)."""

    prepared: Prepared
    index: int  # which prompt of the HTTP request
    out: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    id: int = field(default_factory=lambda: next(_ids))
    arrived: float = field(default_factory=time.perf_counter)
    handle: Any = None
    first_token_at: float | None = None
    token_times: dict[int, list[float]] = field(default_factory=dict)  # sample -> first, last
    samples_done: int = 0
    cancel_reason: str | None = None  # set from the event loop; read by the scheduler

    @property
    def rows(self) -> int:
        return self.prepared.cfg.num_samples

    def push(self, kind: str, payload: Any = None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, (self.index, kind, payload))


class Scheduler:
    def __init__(self, engine, metrics: Metrics, max_batch: int, max_queue: int):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}  # job id -> job
        self._running_rows = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lmlab-scheduler", daemon=True)

    # ---- the event loop's side -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def submit(self, jobs: list[Job]) -> None:
        """All of a request's jobs join the queue, or none (429 when the queue is full)."""
        with self._cv:
            if len(self._waiting) + len(jobs) > self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy: {len(self._waiting)} requests are waiting "
                    f"(--max-queue {self.max_queue}); retry shortly",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
            self._waiting.extend(jobs)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    def cancel(self, jobs: list[Job], reason: str = "client") -> None:
        with self._cv:
            for job in jobs:
                if job.cancel_reason is None:
                    job.cancel_reason = reason
                    if job in self._waiting:  # never started: it just leaves the queue
                        self._waiting.remove(job)
                        self._count_cancel(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        return self._running_rows

    # ---- the scheduler thread --------------------------------------------------------------
    def _loop(self) -> None:
        batch = self.engine.batch(max_rows=self.max_batch, text_deltas=True)
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._running):
                    self._cv.wait()
                if self._stopping:
                    break
                newcomers = self._admit()
            self._drop_cancelled_and_late(batch)
            for job in newcomers:
                self._add(batch, job)
            self._update_gauges()
            if not batch.has_work:
                if self._running:  # never expected: fail them rather than spin on an idle batch
                    log.error("%d requests lost their rows in the batch", len(self._running))
                    self._fail_running(ApiError(500, "the request lost its place in the batch"))
                continue
            try:
                events = batch.step()
            except Exception:
                log.exception(
                    "a generation step failed; failing its %d requests", len(self._running)
                )
                self._fail_running(ApiError(500, "the generation step failed (see the server log)"))
                batch = self.engine.batch(max_rows=self.max_batch, text_deltas=True)
                continue
            for event in events:
                self._dispatch(event)
            self._update_gauges()
        for job in list(self._waiting) + list(self._running.values()):
            job.push("error", ApiError(503, "the server is shutting down"))

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit in the free rows (a lone job always fits). Holds the lock."""
        admitted, rows = [], self._running_rows
        while self._waiting:
            job = self._waiting[0]
            if job.cancel_reason is None and rows > 0 and rows + job.rows > self.max_batch:
                break
            self._waiting.popleft()
            if job.cancel_reason is not None:
                self._count_cancel(job)
                continue
            admitted.append(job)
            rows += job.rows
        self.metrics.queue_depth.set(len(self._waiting))
        return admitted

    def _add(self, batch, job: Job) -> None:
        p = job.prepared
        handle = batch.add(Request(p.prompt, p.cfg, tag=job.id))
        if handle.result.error is not None:  # the engine's own checks (ours ran before)
            job.push("error", ApiError(400, handle.result.error, code="invalid_request"))
            return
        job.handle = handle
        self._running[job.id] = job
        self._running_rows += job.rows
        self.metrics.prompt_tokens.inc(len(p.prompt))

    def _drop_cancelled_and_late(self, batch) -> None:
        now = time.perf_counter()
        for job in list(self._running.values()):
            if job.cancel_reason is None and now - job.arrived > job.timeout_s:
                job.cancel_reason = "timeout"
                job.push(
                    "error",
                    ApiError(
                        504, f"the request timed out after {job.timeout_s:g} s", code="timeout"
                    ),
                )
            if job.cancel_reason is not None:
                batch.cancel(job.handle)
                self._remove(job)
                self._count_cancel(job)
        with self._cv:
            late = [j for j in self._waiting if now - j.arrived > j.timeout_s]
            for job in late:
                self._waiting.remove(job)
                job.push(
                    "error", ApiError(504, "the request timed out in the queue", code="timeout")
                )
                self.metrics.cancelled.labels("timeout").inc()

    def _count_cancel(self, job: Job) -> None:
        self.metrics.cancelled.labels(job.cancel_reason or "client").inc()

    def _remove(self, job: Job) -> None:
        if self._running.pop(job.id, None) is not None:
            self._running_rows -= job.rows

    def _fail_running(self, err: ApiError) -> None:
        for job in list(self._running.values()):
            job.push("error", err)
            self._remove(job)

    def _dispatch(self, event) -> None:
        job = self._running.get(event.tag)
        if job is None:  # cancelled during this step
            return
        now = time.perf_counter()
        if event.token is not None:
            if job.first_token_at is None:
                job.first_token_at = now
                self.metrics.ttft.observe(now - job.arrived)
            times = job.token_times.setdefault(event.sample, [now, now])
            times[1] = now
            self.metrics.completion_tokens.inc()
        if event.token is not None or event.text:  # a stop token's event may flush held text
            job.push("event", event)
        if event.done is not None:
            gen = event.done
            times = job.token_times.get(event.sample)
            if times and len(gen.tokens) > 1:
                self.metrics.per_token.observe((times[1] - times[0]) / (len(gen.tokens) - 1))
            job.push("done", gen)
            job.samples_done += 1
            if job.samples_done == job.rows:
                job.push("finished", job.handle)
                self._remove(job)

    def _update_gauges(self) -> None:
        self.metrics.running_rows.set(self._running_rows)
