"""A small Prometheus text exposition (format 0.0.4) of request counts, latencies and errors."""
from __future__ import annotations

import threading
from collections import defaultdict

# seconds; fine-grained below 100 ms where the serving target lies
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(**labels: str) -> str:
    parts = []
    for key, value in labels.items():
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{key}="{value}"')
    return "{" + ",".join(parts) + "}"


class ServerMetrics:
    """Thread-safe counters: requests by (method, route, status), latency histogram by route, errors.

    ``route`` is the route template (``/items/{item_id}``), never the raw path, so the number of
    series stays bounded; unmatched paths are counted as ``other``.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._bucket_counts: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            counts = self._bucket_counts.setdefault(route, [0] * len(self.buckets))
            for i, upper in enumerate(self.buckets):
                if seconds <= upper:
                    counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1
            if status >= 400:
                self._errors[(route, "server" if status >= 500 else "client")] += 1

    def render(self) -> str:
        """The Prometheus text format."""
        lines = [
            "# HELP dreamrec_requests_total HTTP requests by method, route and status code.",
            "# TYPE dreamrec_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f"dreamrec_requests_total{_labels(method=method, route=route, status=status)} {n}")
            lines += [
                "# HELP dreamrec_request_duration_seconds Time from receiving a request to the end of its response.",
                "# TYPE dreamrec_request_duration_seconds histogram",
            ]
            for route in sorted(self._bucket_counts):
                for upper, n in zip(self.buckets, self._bucket_counts[route]):
                    lines.append(f"dreamrec_request_duration_seconds_bucket{_labels(route=route, le=repr(upper))} {n}")
                lines.append(
                    f"dreamrec_request_duration_seconds_bucket{_labels(route=route, le='+Inf')} {self._count[route]}"
                )
                lines.append(f"dreamrec_request_duration_seconds_sum{_labels(route=route)} {self._sum[route]:.6f}")
                lines.append(f"dreamrec_request_duration_seconds_count{_labels(route=route)} {self._count[route]}")
            lines += [
                "# HELP dreamrec_request_errors_total Responses with status >= 400, by route and kind (client/server).",
                "# TYPE dreamrec_request_errors_total counter",
            ]
            for (route, kind), n in sorted(self._errors.items()):
                lines.append(f"dreamrec_request_errors_total{_labels(route=route, kind=kind)} {n}")
        return "\n".join(lines) + "\n"
