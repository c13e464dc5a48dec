"""Load benchmark of ``dreamrec serve``: throughput and p50/p95/p99 latency of POST /recommend.

For each run directory and each ``--workers`` count it starts ``dreamrec serve RUN --workers N`` on a
free loopback port (``--index`` retrieval; ``--sampler``/``--steps`` for diffusion runs), drives POST /recommend
(k=20, random histories of catalog ids) at each ``--concurrency`` level (that many keep-alive connections, each
sending its next request when the last is answered), stops the server and writes
``benchmarks/results/serve/<model>-<items>-<index>-w<workers>.json``; then regenerates ``benchmarks/SERVING.md``.

The client runs on the same machine as the server, so its CPU is taken from the server. ``--client wrk`` (the
default when the ``wrk`` binary is on the PATH; ``apt-get install wrk``) is a C load generator that costs a few
percent of a core: ``--warmup-seconds`` at the highest concurrency, then ``--seconds`` per level. ``--client
httpx`` (Python threads, ``--warmup`` then ``--requests`` requests per level) takes about a core at a few hundred
requests per second and so understates the server, most of all with several workers.

    python benchmarks/serve_load.py                       # trains popularity, sasrec, dreamrec on synthetic data
    python benchmarks/serve_load.py RUN_SASREC RUN_DREAMREC --sampler ddim --steps 10
    python benchmarks/serve_load.py --large-catalog 1000000 --index faiss --keep runs/serve-1m
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SRC = ROOT / "src"


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS, Python and torch versions."""
    import torch

    from dreamrec.eval.report import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_synthetic_runs(out: Path, seed: int = 0) -> list[Path]:
    """Train popularity, a small SASRec and DreamRec (library defaults: DDIM-10 sampler) on synthetic
    data (2,000 users, 500 items) into ``out``."""
    sys.path.insert(0, str(SRC))
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.data.synthetic import SyntheticConfig, generate
    from dreamrec.train.run import train_run

    ds = generate(SyntheticConfig(seed=seed)).dataset
    data_dir = ds.save(out / "data")
    runs = []
    # DreamRec with DDIM-10, the sampler of the committed measurements (the paper's DDPM over all T is its default)
    for name, params in (("popularity", {}), ("sasrec", {"hidden": 64, "n_layers": 2}),
                         ("dreamrec", {"sampler": "ddim", "sampler_steps": 10})):
        cfg = RunConfig(model=name, params=params, train=TrainConfig(epochs=3, seed=seed, threads=1))
        train_run(cfg, data_dir, out / name, progress=False, log=None, dataset=ds)
        runs.append(out / name)
    return runs


def large_catalog_dataset(n_items: int, n_users: int = 2000, length: int = 12, seed: int = 0) -> Any:
    """A leave-one-out dataset whose catalog has ``n_items`` items (most never interacted with): each user's
    sequence walks a random neighbourhood of the catalog with Zipf-like item popularity. (The HMM
    generator of ``dreamrec.data.synthetic`` keeps dense [topics, items] matrices: not for 1M items.)"""
    sys.path.insert(0, str(SRC))
    import pandas as pd

    from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, pad_left

    rng = np.random.default_rng(seed)
    popular = 1 + rng.permutation(n_items)[: max(1000, n_items // 100)]  # the 1 % the users touch
    weights = 1.0 / np.arange(1, len(popular) + 1) ** 0.8
    seqs = [rng.choice(popular, size=length, p=weights / weights.sum()) for _ in range(n_users)]
    users = np.arange(n_users)

    def rows(cut: int) -> SampleRows:
        return SampleRows(pad_left([s[: len(s) - cut] for s in seqs], 20),
                          np.array([s[len(s) - cut] for s in seqs]), users)

    return PreparedDataset(item_ids=pd.Series(np.arange(1, n_items + 1), name="item_id"),
                           train=Sequences.from_lists([s[:-2] for s in seqs], users), val=rows(2), test=rows(1),
                           max_len=20, protocol="loo", user_ids=pd.Series(users, name="user_id"),
                           info={"source": f"serve_load.large_catalog_dataset(n_items={n_items}, seed={seed})"})


def train_large_catalog_runs(out: Path, n_items: int, seed: int = 0, minutes: float = 2.0) -> list[Path]:
    """SASRec (BCE, the paper's loss: no catalog-wide softmax) and DreamRec (DDPM T=500 and the paper's
    other defaults) on :func:`large_catalog_dataset`, trained for ``minutes`` each: the catalog size is
    what this measures, not accuracy."""
    sys.path.insert(0, str(SRC))
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.train.run import train_run

    ds = large_catalog_dataset(n_items, seed=seed)
    data_dir = ds.save(out / "data")
    runs = []
    for name, params in (("sasrec", {"hidden": 64, "n_layers": 2, "n_heads": 2, "loss": "bce", "n_negatives": 1}),
                         ("dreamrec", {"hidden": 64, "timesteps": 500, "beta_schedule": "linear",
                                       "denoiser": "mlp1", "guidance_w": 4.0})):
        cfg = RunConfig(model=name, params=params,
                        train=TrainConfig(epochs=1, seed=seed, threads=1, max_minutes=minutes))
        train_run(cfg, data_dir, out / name, progress=False, log=None, dataset=ds)
        runs.append(out / name)
    return runs


def sampler_label(run_dir: Path, sampler: str | None, steps: int | None) -> str:
    """The sampler a diffusion run is served with (``ddim-10``, ``ddpm-500``, ``onestep``; ``-closed`` where DreamRec's
    ``mlp1`` draws from the chain's closed form, ``-loop`` where it steps); ``-`` for others."""
    import yaml

    params = yaml.safe_load((run_dir / "config.yaml").read_text()).get("params") or {}
    if "sampler" not in params:
        return "-"
    name = sampler or params["sampler"]
    if name == "onestep":
        return name
    n = steps or params.get("sampler_steps") or (params.get("timesteps") if name == "ddpm" else None)
    label = f"{name}-{n}" if n else name
    if params.get("denoiser") == "mlp1" and params.get("closed_form", True):  # DreamRec's closed-form sampler
        return label + "-closed"
    return label + ("-loop" if "closed_form" in params or params.get("denoiser") == "mlp1" else "")


def _start_server(run_dir: Path, port: int, args: argparse.Namespace, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("OMP_NUM_THREADS", None)  # the server's defaults (dreamrec.threads) unless --threads
    cmd = [sys.executable, "-m", "dreamrec.cli", "serve", str(run_dir), "--port", str(port), "--workers", str(workers),
           "--index", args.index, "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if sampler_label(run_dir, None, None) != "-":  # a diffusion run
        cmd += (["--sampler", args.sampler] if args.sampler else []) + (["--steps", str(args.steps)] if args.steps else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 600) -> dict[str, Any]:
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            return httpx.get(f"{base}/health", timeout=2).json()
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.time() > deadline:
                raise RuntimeError("server did not become healthy")
            time.sleep(0.2)


def drive(base: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send ``bodies`` to POST /recommend from ``concurrency`` threads; latency stats in ms."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=30) as client:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = client.post("/recommend", json=bodies[i])
                ms = (time.perf_counter() - t) * 1e3
                with lock:
                    latencies.append(ms)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "requests": len(bodies), "errors": errors, "seconds": wall,
            "throughput_rps": len(bodies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean())}


WRK_SCRIPT = """
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/recommend", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {"requests": %d, "seconds": %.6f, "errors": %d, "p50_ms": %.4f, '
    .. '"p95_ms": %.4f, "p99_ms": %.4f, "mean_ms": %.4f}\\n', summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3))
end
"""


def write_wrk_script(bodies: list[dict[str, Any]], path: Path) -> Path:
    """The wrk Lua script that cycles through ``bodies`` (POST /recommend) and prints the result line."""
    # a JSON string literal is a Lua string literal when it has no \\u escape (ensure_ascii=False; the body keeps its own)
    quoted = ",\n".join(json.dumps(json.dumps(b), ensure_ascii=False) for b in bodies)
    path.write_text("local bodies = {\n" + quoted + "\n}\n" + WRK_SCRIPT)
    return path


def drive_wrk(base: str, lua: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """``wrk`` with ``concurrency`` keep-alive connections for ``seconds``, running the script ``lua``
    (:func:`write_wrk_script`); latency percentiles from wrk's histogram (ms). ``errors`` counts non-2xx answers and
    socket errors."""
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(lua), base],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    return {"concurrency": concurrency, "requests": r["requests"], "errors": r["errors"], "seconds": r["seconds"],
            "throughput_rps": r["requests"] / r["seconds"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
            "p99_ms": r["p99_ms"], "mean_ms": r["mean_ms"]}


def median_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the median throughput (its latencies with it), and every repetition's req/s."""
    ranked = sorted(reps, key=lambda r: r["throughput_rps"])
    return {**ranked[(len(ranked) - 1) // 2], "throughput_rps_repeats": [r["throughput_rps"] for r in reps]}


def bench_run(run_dir: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    import pandas as pd

    ids = [v.item() if hasattr(v, "item") else v for v in pd.read_parquet(run_dir / "items.parquet")["item_id"]]
    rng = np.random.default_rng(args.seed)

    def body() -> dict[str, Any]:
        n = int(rng.integers(1, args.max_history + 1))
        return {"history": [ids[j] for j in rng.integers(0, len(ids), n)], "k": args.k}

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(run_dir, port, args, workers)
    try:
        t = time.perf_counter()
        health = _wait_healthy(base, proc)
        startup = time.perf_counter() - t
        if args.client == "wrk":
            with tempfile.TemporaryDirectory() as tmp:
                lua = write_wrk_script([body() for _ in range(2000)], Path(tmp) / "load.lua")
                drive_wrk(base, lua, max(args.concurrency), args.warmup_seconds)  # every worker warmed up
                rows = [median_of([drive_wrk(base, lua, c, args.seconds) for _ in range(args.repeat)])
                        for c in args.concurrency]
        else:
            drive(base, [body() for _ in range(args.warmup)], max(args.concurrency))  # every worker warmed up
            rows = [median_of([drive(base, [body() for _ in range(args.requests)], c) for _ in range(args.repeat)])
                    for c in args.concurrency]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    sampler = sampler_label(run_dir, args.sampler, args.steps)
    return {"model": health["model"], "n_items": health["n_items"], "max_len": health["max_len"],
            "run_dir": str(run_dir), "workers": workers, "index": args.index, "sampler": sampler,
            "startup_seconds": startup, "rows": rows}


def _rps(row: dict[str, Any]) -> str:
    reps = row.get("throughput_rps_repeats") or []
    rps = f"{row['throughput_rps']:.0f}"
    return rps + (f" ({min(reps):.0f}-{max(reps):.0f})" if len(reps) > 1 else "")


def write_serving_md(path: Path = ROOT / "benchmarks" / "SERVING.md") -> None:
    """Render every JSON of results/serve and results/faiss as markdown tables."""
    out = ["# Serving benchmarks", "",
           "Generated by `benchmarks/serve_load.py` and `benchmarks/faiss_catalog.py` from the JSON files in",
           "`benchmarks/results/serve/` and `benchmarks/results/faiss/`; do not edit by hand.",
           "Latencies are client-side on loopback (client and server share the machine). The client is wrk (C, a",
           "few percent of a core) or httpx (Python threads, about a core at a few hundred requests per second, so",
           "it understates the server). The load average at start is shown: above the core count, other jobs",
           "were running and the numbers are pessimistic.",
           ""]
    serve = [r for p in sorted((RESULTS / "serve").glob("*.json"))
             if (r := json.loads(p.read_text())).get("benchmark") == "serve_load"]
    if serve:
        out += ["## HTTP load (POST /recommend, k=20)", "",
                "Concurrent requests to one worker share model calls (`dreamrec.serve.async_batch`). With `--repeat R`",
                "each level is measured R times: the median repetition is shown, with the range of req/s.", "",
                "| model | items | index | sampler | workers | concurrency | requests | errors | req/s | p50 ms "
                "| p95 ms | p99 ms | client | date | machine |",
                "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        serve.sort(key=lambda r: (r["n_items"], r["model"], r.get("sampler", ""), r.get("workers", 1)))
        for r in serve:
            m = r["machine"]
            for row in r["rows"]:
                out.append(f"| {r['model']} | {r['n_items']:,} | {r.get('index', 'exact')} | {r.get('sampler', '-')} "
                           f"| {r.get('workers', 1)} | {row['concurrency']} | {row['requests']} | {row['errors']} "
                           f"| {_rps(row)} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} "
                           f"| {row['p99_ms']:.1f} | {r.get('client', 'httpx').split()[0]} | {r['date'][:10]} "
                           f"| {m['cpu']}, {m['cores']} cores, "
                           f"load {m['loadavg_at_start'][0]:.1f} |")
        out += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in serve})), ""]
    fuzz_path = RESULTS / "serve" / "schemathesis.json"
    if fuzz_path.exists():
        fz = json.loads(fuzz_path.read_text())
        m = fz["machine"]
        out += ["## API fuzzing: the schemathesis CLI with `--checks all` against every model's server", "",
                f"{fz['schemathesis']}, {fz['max_examples']} examples per operation, seed {fz['seed']}, "
                f"{fz['date'][:10]}, {m['cpu']}. Command: `{fz['command']}` (the runs `dreamrec demo` trains).", "",
                "| model | exit code | phases: coverage / fuzzing (the examples phase has no examples to run) | test cases |", "|---|---:|---|---|"]
        for r in fz["runs"]:
            phases = " / ".join(s for s in r["summary"] if "generated" not in s)
            cases = next((s for s in r["summary"] if "generated" in s), "")
            out.append(f"| {r['model']} | {r['exit_code']} | {phases} | {cases} |")
        out.append("")
    faiss_results = [json.loads(p.read_text()) for p in sorted((RESULTS / "faiss").glob("*.json"))]
    for r in faiss_results:
        c, e, f, m = r["catalog"], r["exact"], r["faiss"], r["machine"]
        out += [f"## Retrieval on {c['n']:,} items x {c['d']} (clustered), k={c['k']}", "",
                f"{m['cpu']}, {m['threads']} thread(s), load average {m['loadavg_at_start'][0]:.1f} at start, "
                f"{r['date'][:10]}. Command: `{r['command']}`.", "",
                "| index | recall@k | ms/query (batch 1, mean) | p99 batch 1 | ms/query (batch) | speedup (batch 1) "
                "| memory MB | build s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
                f"| exact (matmul + top-k) | 1.000 | {e['ms_per_query_batch1']['mean']:.2f} "
                f"| {e['ms_per_query_batch1']['p99']:.2f} | {e['ms_per_query_batched']:.3f} | 1.0 "
                f"| {e['bytes'] / 2**20:.0f} | 0 |"]
        recall_key = f"recall@{c['k']}"
        for row in f["sweep"]:
            out.append(f"| {f['spec']} nprobe={row['nprobe']} | {row[recall_key]:.3f} "
                       f"| {row['ms_per_query_batch1']['mean']:.2f} | {row['ms_per_query_batch1']['p99']:.2f} "
                       f"| {row['ms_per_query_batched']:.3f} | {row['speedup_batch1']:.1f} "
                       f"| {f['bytes'] / 2**20:.0f} | {f['build_seconds']:.0f} |")
        ch = r["chosen"]
        verdict = (f"target (recall >= {r['target']['recall']}, >= 5x faster): "
                   + ("met" if r["target"]["met"] else "NOT met")
                   + (f" with nprobe={ch['nprobe']}" if ch else ""))
        out += ["", verdict + ". IVF-Flat keeps every vector (memory as exact plus ids and centroids); "
                "a compressed spec (e.g. `IVF4096,SQ8`, `IVF4096,PQ16`) trades recall for memory.", ""]
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: train popularity, sasrec and dreamrec)")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                   help="load generator (auto: wrk when on the PATH, else httpx)")
    p.add_argument("--seconds", type=float, default=10.0, help="wrk: seconds per concurrency level")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="wrk: warm-up at the highest concurrency")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure each level this many times; report the median-throughput repetition")
    p.add_argument("--requests", type=int, default=1000, help="httpx: requests per concurrency level")
    p.add_argument("--warmup", type=int, default=100, help="httpx: warm-up requests")
    p.add_argument("--concurrency", type=ints, default=[1, 8, 32])
    p.add_argument("--workers", type=ints, default=[1, 2], help="worker counts to serve with")
    p.add_argument("--index", default="exact", help="exact | faiss")
    p.add_argument("--sampler", default=None, help="sampler of diffusion runs (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps of diffusion runs")
    p.add_argument("--large-catalog", type=int, default=None, metavar="N",
                   help="train sasrec and dreamrec on a synthetic N-item catalog and serve those")
    p.add_argument("--keep", type=Path, default=None, help="where the trained runs go (default: a temporary folder)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: the server's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=RESULTS / "serve")
    args = p.parse_args()
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "httpx"
    elif args.client == "wrk" and not shutil.which("wrk"):
        p.error("--client wrk: no wrk binary on the PATH (apt-get install wrk)")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        if args.runs:
            runs = args.runs
        elif args.large_catalog:
            runs = train_large_catalog_runs(where, args.large_catalog, args.seed)
        else:
            runs = train_synthetic_runs(where, args.seed)
        for run, workers in [(r, w) for r in runs for w in args.workers]:
            load = os.getloadavg()
            result = bench_run(run, args, workers)
            result.update(
                benchmark="serve_load",
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                command="python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
                machine={**machine_info(), "loadavg_at_start": load, "server_threads": args.threads},
                client=("wrk (C, one thread), same machine" if args.client == "wrk"
                        else "httpx (Python threads), same machine"),
            )
            if not args.runs:
                result["run_dir"] = "synthetic (trained by the script)"
            args.out_dir.mkdir(parents=True, exist_ok=True)
            parts = [result["model"], str(result["n_items"]), args.index, result["sampler"], f"w{workers}"]
            name = "-".join(p for p in parts if p != "-")
            (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(name, json.dumps([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}
                                    for row in result["rows"]]), flush=True)
    write_serving_md()


if __name__ == "__main__":
    main()
