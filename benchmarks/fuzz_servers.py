"""The schemathesis CLI with ``--checks all`` against ``dreamrec serve`` for every run given.

For each run directory: start ``dreamrec serve RUN`` on a free loopback port, run
``schemathesis run http://127.0.0.1:PORT/openapi.json --checks all --max-examples N --seed S``
(positive and negative generation, every phase), stop the server, and record schemathesis's exit
code and summary. Writes ``benchmarks/results/serve/schemathesis.json`` and prints one line per run.
Exit code 1 if any run had a failure.

    python benchmarks/fuzz_servers.py runs/demo/*            # the runs `dreamrec demo` trained
    python benchmarks/fuzz_servers.py runs/demo/sasrec --max-examples 200
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import RESULTS, ROOT, SRC, _free_port, _wait_healthy, machine_info  # noqa: E402


def fuzz(run_dir: Path, args: argparse.Namespace) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    server = subprocess.Popen([sys.executable, "-m", "dreamrec.cli", "serve", str(run_dir), "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health = _wait_healthy(base, server)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [args.schemathesis, "run", f"{base}/openapi.json", "--checks", "all",
                   "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                   "--report-dir", tmp, "--no-color"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=tmp)
    finally:
        server.terminate()
        server.wait(timeout=60)
    out = proc.stdout + proc.stderr
    summary = [line.strip() for line in out.splitlines() if re.search(r"\d+ (passed|failed|errored|skipped)", line)]
    failures = [line.strip() for line in out.splitlines() if line.strip().startswith(("- ", "\u2022", "_ "))][:40]
    return {"run": str(run_dir), "model": health["model"], "exit_code": proc.returncode,
            "summary": summary[-3:], "failures": failures if proc.returncode else [],
            "output_tail": out[-3000:] if proc.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--max-examples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=900, help="seconds per run")
    p.add_argument("--schemathesis", default=shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis"))
    p.add_argument("--out", type=Path, default=RESULTS / "serve" / "schemathesis.json")
    args = p.parse_args()
    version = subprocess.run([args.schemathesis, "--version"], capture_output=True, text=True).stdout.strip()
    results = []
    for run in args.runs:
        if not (run / "config.yaml").exists():
            continue
        r = fuzz(run, args)
        results.append(r)
        print(f"{r['model']:<20} exit {r['exit_code']}  {' | '.join(r['summary'])}", flush=True)
    report = {"benchmark": "schemathesis", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "schemathesis": version, "machine": machine_info(), "max_examples": args.max_examples,
              "seed": args.seed, "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(1 if any(r["exit_code"] for r in results) else 0)


if __name__ == "__main__":
    main()
