"""Concurrent HTTP requests merged into one model call, on the event loop's side.

``POST /recommend`` hands its request to :class:`RequestBatcher` instead of a worker thread of its own. The
first request starts a drain task; while the model thread answers one group, the requests that arrive wait in
``pending`` and are answered together by the next call (no batching window: a lone request goes at once). A
group is the requests with equal ``k``, ``exclude_seen``, ``strict`` and intent use, at most ``max_rows`` of
them, answered by one :meth:`Recommender.recommend_batch`. Every answer equals the request's answer alone (the
noise of a generated recommendation is keyed by its history and intent, ``dreamrec.keyed_noise``). If the
merged call fails (for example ``strict`` with an unknown id in one history), each request of the group is
answered alone, so one bad request never fails another.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dreamrec.serve.coalesce import run_isolated, take_group
from dreamrec.serve.recommender import Recommender


class RequestBatcher:
    """Answer ``/recommend`` requests in merged groups on one model thread (see the module docstring)."""

    def __init__(self, recommender: Recommender, max_rows: int = 256):
        self.recommender = recommender
        self.max_rows = max_rows
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drain_task: asyncio.Task | None = None  # kept: the loop holds tasks only weakly
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dreamrec-model")

    @staticmethod
    def _key(item: tuple[Any, asyncio.Future]) -> tuple:
        req = item[0]
        return req.k, req.exclude_seen, req.strict, req.intent is None

    async def submit(self, req: Any) -> dict[str, Any]:
        """The response body of one request (``history``, ``k``, ``intent``, ``exclude_seen``, ``strict``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((req, future))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = loop.create_task(self._drain())
        return await future

    def _answer(self, reqs: list[Any]) -> list[dict[str, Any]]:
        first = reqs[0]
        intents = None if first.intent is None else [r.intent for r in reqs]
        recs = self.recommender.recommend_batch([r.history for r in reqs], k=first.k, intents=intents,
                                                exclude_seen=first.exclude_seen, strict=first.strict)
        return [r.to_dict() for r in recs]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = take_group(self._pending, self._key, lambda _: 1, self.max_rows)
            outcomes = await loop.run_in_executor(self._executor, run_isolated, self._answer, [r for r, _ in group])
            for (_, future), (body, error) in zip(group, outcomes):
                if future.done():  # the client went away
                    continue
                if error is None:
                    future.set_result(body)
                else:
                    future.set_exception(error)
