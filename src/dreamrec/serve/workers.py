"""Several serving processes on one port, each accepting on its own socket (``SO_REUSEPORT``).

uvicorn's ``--workers`` lets every worker accept from one shared listening socket. The worker that wakes first
takes every connection waiting in the queue, so a client that opens its keep-alive connections together (a load
balancer's pool, a load test's 8 connections) can land all of them on one worker while the others idle: on the
project's 2-core machine two workers then served no more than one (`benchmarks/experiments/serving/NOTES.md`).
Here each worker binds its own socket to the port with ``SO_REUSEPORT``, and the kernel spreads new connections
over the sockets by a hash of the connection.

:func:`run_workers` is the supervisor: it checks that the port is free, starts the workers (``spawn``: nothing of
the supervisor's memory is copied, it never loads the model), restarts a worker that dies while serving, stops all
of them on SIGINT / SIGTERM, and gives up with a clear error when a worker fails during its start-up.
"""
from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import threading
import time
from typing import Callable

from dreamrec.errors import DreamrecError

BACKLOG = 2048  # uvicorn's default listen queue
STARTUP_GRACE_S = 60.0  # a worker that exits sooner than this after its start failed to start: no restart


def reuseport_supported() -> bool:
    """Linux spreads connections over ``SO_REUSEPORT`` sockets; elsewhere the option means something else or
    is missing, and the caller falls back to uvicorn's shared socket."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY on accepted connections only when proto is IPPROTO_TCP;
    # with proto 0 Nagle's algorithm and the client's delayed ACK add ~40 ms to every keep-alive response
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DreamrecError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def _serve_one(app: str, host: str, port: int, log_level: str) -> None:  # pragma: no cover - runs in a child
    import uvicorn

    sock = _socket(host, port)
    sock.listen(BACKLOG)
    config = uvicorn.Config(app, factory=True, host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(app: str, *, host: str, port: int, workers: int, log_level: str = "info",
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> None:
    """Serve the app factory ``app`` ("module:function") from ``workers`` processes on ``host:port`` until
    SIGINT / SIGTERM (see the module docstring)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _socket(host, port).close()  # the port is free (or shared only with SO_REUSEPORT listeners): fail here if not
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start() -> tuple[multiprocessing.process.BaseProcess, float]:
        p = context.Process(target=_serve_one, args=(app, host, port, log_level), daemon=False)
        p.start()
        return p, time.monotonic()

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start() for _ in range(workers)]
    try:
        while not stop.wait(0.5):
            for i, (p, started) in enumerate(procs):
                if p.is_alive() or stop.is_set():
                    continue
                if time.monotonic() - started < STARTUP_GRACE_S and p.exitcode != 0:
                    raise DreamrecError(f"worker {p.pid} exited during start-up (exit code {p.exitcode}); "
                                        f"see its log above")
                log(f"dreamrec: worker {p.pid} exited (code {p.exitcode}); starting a new one")
                procs[i] = start()
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + 30
        for p, _ in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
