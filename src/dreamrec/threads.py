"""How many torch threads a dreamrec process takes when none is given: its share of the cores, never more.

Measured on the project's 2-core CPU (``benchmarks/threads.py``, ``benchmarks/results/threads/``): serving one
request is a few small matrix products, where a second thread costs more than it gives, and beside another
busy job two threads made latency and training steps several times slower than one. So:

* ``serve``: one thread per worker (:data:`SERVE_THREADS`), capped by the worker's share of the cores
  (``cores // workers``); add workers, not threads, to use more cores;
* ``train``, ``evaluate``, ``recommend``: the process's share of the cores, ``cores // processes`` (all of them
  for one process; under ``torchrun`` each local process gets its share), since a large batch does use a second
  thread on a quiet machine. Two jobs sharing a machine should each say ``train.threads=1``.

``DREAMREC_THREADS`` (an integer) overrides every default; an explicit ``--threads`` / ``train.threads`` wins.
"""
from __future__ import annotations

import os
from typing import Literal

SERVE_THREADS = 1

Kind = Literal["train", "evaluate", "serve"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(kind: Kind, processes: int = 1) -> int:
    """The torch thread count of one of ``processes`` dreamrec processes doing ``kind`` (see the module
    docstring)."""
    env = os.environ.get("DREAMREC_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"DREAMREC_THREADS must be an integer >= 1, got {env!r}") from None
        if value < 1:
            raise ValueError(f"DREAMREC_THREADS must be an integer >= 1, got {env!r}")
        return value
    share = max(1, available_cores() // max(1, processes))
    return min(share, SERVE_THREADS) if kind == "serve" else share


def set_threads(threads: int | None, kind: Kind, processes: int = 1) -> int:
    """Set torch's intra-op threads to ``threads``, or to :func:`default_threads`; returns the count."""
    import torch

    n = threads if threads is not None else default_threads(kind, processes)
    torch.set_num_threads(n)
    return n
