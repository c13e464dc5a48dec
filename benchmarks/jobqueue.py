"""Run a list of benchmark commands with N parallel workers, in file order, each logged to its own file.

    python benchmarks/jobqueue.py JOBS.txt --workers 12 --logs runs/queue/logs

``JOBS.txt`` holds one job per line, ``name: shell command`` (blank lines and ``#`` comments are
skipped; names are letters, digits, ``.``, ``_`` and ``-``). Each job runs with ``bash -c`` in the
current folder, its output goes to ``LOGS/<name>.log``, and ``LOGS/queue.tsv`` gets one line per
start and per finish (time, event, name, exit code, seconds). Jobs already finished with exit code 0
in that file are skipped, so a queue that was stopped can be started again. Used to fill the
benchmark tables on a many-core GPU machine: every benchmark script caches each finished seed, so
one job per (dataset, variant, seed) is safe to run beside the others.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def read_jobs(path: Path) -> list[tuple[str, str]]:
    """(name, command) pairs of a jobs file; raises ValueError naming the line of a malformed job."""
    jobs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, cmd = line.partition(":")
        name, cmd = name.strip(), cmd.strip()
        if not sep or not NAME.match(name) or not cmd:
            raise ValueError(f"{path}:{n}: expected 'name: command', got {line!r}")
        if name in seen:
            raise ValueError(f"{path}:{n}: duplicate job name {name!r}")
        seen.add(name)
        jobs.append((name, cmd))
    return jobs


def finished(tsv: Path) -> set[str]:
    """Names of the jobs that ``tsv`` records as done with exit code 0."""
    if not tsv.exists():
        return set()
    out = set()
    for line in tsv.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[1] == "done" and parts[3] == "0":
            out.add(parts[2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--logs", type=Path, default=Path("runs/queue/logs"))
    args = ap.parse_args()
    jobs = read_jobs(args.jobs)
    args.logs.mkdir(parents=True, exist_ok=True)
    tsv = args.logs / "queue.tsv"
    skip = finished(tsv)
    lock = threading.Lock()

    def note(event: str, name: str, rc: str = "", secs: str = "") -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S")
        with lock:
            with tsv.open("a") as f:
                f.write(f"{stamp}\t{event}\t{name}\t{rc}\t{secs}\n")
            print(f"{stamp} {event:5s} {name} {rc} {secs}", flush=True)

    def run(job: tuple[str, str]) -> int:
        name, cmd = job
        note("start", name)
        t = time.time()
        with (args.logs / f"{name}.log").open("w") as log:
            rc = subprocess.run(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT).returncode
        note("done", name, str(rc), f"{time.time() - t:.0f}")
        return rc

    todo = [j for j in jobs if j[0] not in skip]
    print(f"{len(todo)} jobs to run ({len(jobs) - len(todo)} already done), {args.workers} workers", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        rcs = list(pool.map(run, todo))
    print(f"finished: {rcs.count(0)} ok, {len(rcs) - rcs.count(0)} failed", flush=True)


if __name__ == "__main__":
    main()
