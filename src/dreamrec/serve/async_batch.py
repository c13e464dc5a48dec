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

from dreamrec.serve.recommender import Recommender


class RequestBatcher:
    """Answer ``/recommend`` requests in merged groups on one model thread (see the module docstring)."""

    def __init__(self, recommender: Recommender, max_rows: int = 256):
        self.recommender = recommender
        self.max_rows = max_rows
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dreamrec-model")

    @staticmethod
    def _key(req: Any) -> tuple:
        return req.k, req.exclude_seen, req.strict, req.intent is None

    async def submit(self, req: Any) -> dict[str, Any]:
        """The response body of one request (``history``, ``k``, ``intent``, ``exclude_seen``, ``strict``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((req, future))
        if not self._draining:
            self._draining = True
            self._drain_task = loop.create_task(self._drain())  # kept: the loop holds tasks only weakly
        return await future

    def _answer(self, reqs: list[Any]) -> list[dict[str, Any]]:
        first = reqs[0]
        intents = None if first.intent is None else [r.intent for r in reqs]
        recs = self.recommender.recommend_batch([r.history for r in reqs], k=first.k, intents=intents,
                                                exclude_seen=first.exclude_seen, strict=first.strict)
        return [r.to_dict() for r in recs]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                key = self._key(self._pending[0][0])
                group, rest = [], []
                for item in self._pending:
                    (group if self._key(item[0]) == key and len(group) < self.max_rows else rest).append(item)
                self._pending = rest
                try:
                    bodies = await loop.run_in_executor(self._executor, self._answer, [r for r, _ in group])
                    outcomes: list[tuple[Any, BaseException | None]] = [(b, None) for b in bodies]
                except Exception:  # noqa: BLE001 - answer each request alone: its own error, or its answer
                    outcomes = []
                    for req, _ in group:
                        try:
                            outcomes.append(((await loop.run_in_executor(self._executor, self._answer, [req]))[0], None))
                        except Exception as err:  # noqa: BLE001 - delivered to that request's handler
                            outcomes.append((None, err))
                for (_, future), (body, err) in zip(group, outcomes):
                    if future.done():  # the client went away
                        continue
                    if err is None:
                        future.set_result(body)
                    else:
                        future.set_exception(err)
        finally:
            self._draining = False
