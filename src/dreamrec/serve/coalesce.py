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


T = TypeVar("T")


def take_group(pending: Sequence[T], key: Callable[[T], Hashable], size: Callable[[T], int],
               max_size: int) -> tuple[list[T], list[T]]:
    """Split ``pending`` (oldest first) into the group that runs next and the rest, both in order: the oldest
    item and the later ones of its key, taken in order while their total ``size`` stays within ``max_size``
    (always at least one)."""
    first = key(pending[0])
    group: list[T] = []
    rest: list[T] = []
    total, full = 0, False
    for item in pending:
        if not full and key(item) == first:
            total += size(item)
            full = bool(group) and total > max_size
            if not full:
                group.append(item)
                continue
        rest.append(item)
    return group, rest


def run_isolated(run_many: Callable[[list[J]], Sequence[R]],
                 jobs: list[J]) -> list[tuple[R | None, BaseException | None]]:
    """``run_many(jobs)`` as one call, as ``(result, None)`` per job; if that call raises, each job is run
    alone, so an error, ``(None, error)``, reaches only the job that raises it."""
    try:
        results = list(run_many(jobs))
        if len(results) != len(jobs):
            raise RuntimeError(f"run_many returned {len(results)} results for {len(jobs)} jobs")
    except Exception as error:  # noqa: BLE001 - attributed to the job(s) that raise it
        if len(jobs) == 1:
            return [(None, error)]
        return [run_isolated(run_many, [job])[0] for job in jobs]
    return [(r, None) for r in results]


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
        with self._mutex:  # own is the oldest pending job, so it is taken first
            batch, self._pending = take_group(self._pending, lambda s: self._key(s.job),
                                              lambda s: self._size(s.job), self.max_size)
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
        for s, (result, error) in zip(batch, run_isolated(self._counted, [s.job for s in batch])):
            s.result, s.error = result, error
            self._finish(s)

    def _counted(self, jobs: list[J]) -> Sequence[R]:
        results = list(self._run_many(jobs))
        if len(results) == len(jobs):
            self.calls += 1  # a call that answered every job
        return results

    def _finish(self, s: _Slot[J]) -> None:
        self.jobs += 1
        s.lead = False
        s.done.set()

