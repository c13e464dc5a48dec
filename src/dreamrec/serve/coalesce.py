"""Request coalescing: concurrent calls merged into one model call (dynamic batching without a wait).

A server thread that asks for a ranking while another one is computing does not queue behind it one
request at a time: it waits, and when the running call ends, everything that arrived meanwhile runs as
one batch. A model call costs about the same for one row as for a few dozen (the work is small matrix
products and per-call overhead), so under concurrency the latency stays near two model calls instead of
growing with the queue, and no request is delayed when the server is idle (there is no batching window).

There is no background thread: the first caller to find the coalescer idle becomes the *leader*, runs
the pending jobs as one batch, then hands the lead to the oldest job still waiting (or goes idle). Each
job is computed exactly once, by whichever thread leads at the time.

Answers do not depend on the merging: :class:`dreamrec.serve.recommender.Recommender` only merges jobs
that ask the same question shape (same ``k``, history exclusion and intent use), and a sampled model's
noise is keyed per row (:mod:`dreamrec.keyed_noise`).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class _Slot(Generic[J]):
    __slots__ = ("job", "done", "lead", "result", "error")

    def __init__(self, job: J):
        self.job = job
        self.done = threading.Event()  # set when the result (or error) is in, or when the slot is given the lead
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None


class Coalescer(Generic[J, R]):
    """Runs ``run_many(jobs) -> results`` for jobs submitted concurrently, merging those that wait.

    ``key(job)`` groups jobs that may share one call (default: all of them); one call takes jobs of
    total ``size(job)`` (default 1 each) up to ``max_size``, and always at least one job. If a merged call raises, its jobs are retried one by one so that an error reaches only the
    request that caused it.
    """

    def __init__(self, run_many: Callable[[list[J]], Sequence[R]], *, key: Callable[[J], Hashable] | None = None,
                 size: Callable[[J], int] | None = None, max_size: int = 64):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._run_many = run_many
        self._key = key or (lambda _: None)
        self._size = size or (lambda _: 1)
        self.max_size = max_size
        self._mutex = threading.Lock()
        self._pending: list[_Slot[J]] = []
        self._busy = False
        self.calls = 0  # model calls made (for tests and metrics)
        self.jobs = 0  # jobs answered

    def __call__(self, job: J) -> R:
        slot: _Slot[J] = _Slot(job)
        with self._mutex:
            self._pending.append(slot)
            slot.lead = not self._busy
            self._busy = True
        if not slot.lead:
            slot.done.wait()
        if slot.lead:  # the first caller on an idle coalescer, or one handed the lead
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _lead(self, own: _Slot[J]) -> None:
        with self._mutex:
            first_key = self._key(own.job)
            batch, total = [], 0
            for s in self._pending:  # own is the oldest pending job, so it is taken first
                if self._key(s.job) != first_key:
                    continue
                total += self._size(s.job)
                if batch and total > self.max_size:
                    break
                batch.append(s)
            taken = {id(s) for s in batch}
            self._pending = [s for s in self._pending if id(s) not in taken]
        try:
            self._run(batch)
        finally:
            with self._mutex:
                if self._pending:
                    nxt = self._pending[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False

    def _run(self, batch: list[_Slot[J]]) -> None:
        try:
            results = list(self._run_many([s.job for s in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_many returned {len(results)} results for {len(batch)} jobs")
            self.calls += 1
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                self._finish(batch[0])
                return
            for s in batch:  # attribute the error to the job(s) that raise it
                self._run([s])
            return
        for s, r in zip(batch, results):
            s.result = r
            self._finish(s)

    def _finish(self, s: _Slot[J]) -> None:
        self.jobs += 1
        s.lead = False
        s.done.set()

