"""Prometheus metrics of the HTTP app (request counts, latencies, errors) via ``prometheus-client``.

With one process, each :class:`ServerMetrics` keeps its series in its own registry. With several
worker processes (``dreamrec serve --workers N``) every worker only sees its own requests, so a
scrape answered by one worker would show that worker's share. There the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh folder before any worker starts; prometheus-client's
multiprocess mode then has every worker write its values to memory-mapped files in that folder,
and ``/metrics`` aggregates the files of all workers (``MultiProcessCollector``: counters and
histogram buckets summed), whichever worker answers. See the prometheus-client documentation,
"Multiprocess Mode (E.g. Gunicorn)".
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# seconds; fine-grained below 100 ms where the serving target lies
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared metrics folder of a multi-worker server, or None for a single process. None too
    when the variable was set only after prometheus-client was imported (its values then live in
    this process, not in the folder, and this process's own counts are what can be shown)."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if not path or values.ValueClass is values.MutexValue:
        return None
    return path


class ServerMetrics:
    """Requests by (method, route, status), a latency histogram by route, errors by (route, kind).

    ``route`` is the route template (``/items/{item_id}``), never the raw path, so the number of
    series stays bounded; unmatched paths are counted as ``other``. In multiprocess mode
    (:func:`multiprocess_dir` set when prometheus-client was imported) :meth:`render` covers every
    worker; otherwise this instance's own counts.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.shared_dir = multiprocess_dir()
        # multiprocess: values live in the shared files, read back at render time; no registry holds them
        self._registry = None if self.shared_dir else CollectorRegistry(auto_describe=True)
        self._requests = Counter("dreamrec_requests", "HTTP requests by method, route and status code.",
                                 ["method", "route", "status"], registry=self._registry)
        self._latency = Histogram(
            "dreamrec_request_duration_seconds", "Time from receiving a request to the end of its response.",
            ["route"], buckets=buckets, registry=self._registry,
        )
        self._errors = Counter(
            "dreamrec_request_errors", "Responses with status >= 400, by route and kind (client/server).",
            ["route", "kind"], registry=self._registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self._requests.labels(method=method, route=route, status=str(status)).inc()
        self._latency.labels(route=route).observe(seconds)
        if status >= 400:
            self._errors.labels(route=route, kind="server" if status >= 500 else "client").inc()

    def render(self) -> str:
        """The Prometheus text format (0.0.4)."""
        if self.shared_dir is None:
            assert self._registry is not None
            return generate_latest(self._registry).decode()
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry).decode()
