"""How many torch threads a dreamrec process should take by default, measured on this machine.

    python benchmarks/threads.py [--zhihu DIR] [--threads 1 2] [--steps 40] [--requests 200]

For SASRec-CE and DreamRec (the paper's Zhihu configs; synthetic data of Zhihu's shape without ``--zhihu``),
at each thread count, on a quiet machine and with a second job running (a subprocess doing single-thread
matrix products the whole time, as a second training job would):

* train: seconds per optimiser step (the trainer's ``train_step`` on real batches, median of ``--steps``);
* evaluate: sequences per second of full-ranking evaluation on 2,000 test rows;
* serve: latency of one ``Recommender.recommend`` call (p50 / p95 over ``--requests`` histories).

Writes ``benchmarks/results/threads/threads.json`` and ``.md``; the defaults in ``dreamrec.threads``
cite it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, ROOT  # noqa: E402

from dreamrec.config import build_run_config, load_yaml  # noqa: E402
from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.train.run import resolve, train_run  # noqa: E402
from dreamrec.train.trainer import batches, make_optimizer, seed_everything, train_step  # noqa: E402

CONFIGS = {"sasrec": ROOT.parent / "configs/sasrec/zhihu-ce.yaml", "dreamrec": ROOT.parent / "configs/dreamrec/zhihu.yaml"}


def _burn(stop: Any) -> None:
    """The second job: single-thread matrix products until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        for _ in range(20):
            a = torch.tanh(a @ a.T / 16)


def zhihu_like(out: Path) -> Path:
    from dreamrec.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(n_users=9000, n_items=4838, n_topics=40, seed=0, protocol="dreamrec")
    return generate(cfg).dataset.save(out)


def measure(name: str, ds: PreparedDataset, data_dir: Path, run_dir: Path, threads: int, steps: int,
            requests: int) -> dict[str, float]:
    from dreamrec.serve import Recommender

    torch.set_num_threads(threads)
    cfg = build_run_config(load_yaml(CONFIGS[name]), str(CONFIGS[name]))
    seed_everything(0)
    cfg, model = resolve(cfg, ds)
    opt = make_optimizer(model, cfg.train)
    it, _ = batches(model, ds, cfg.train.batch_size, cfg.train.max_len or ds.max_len, np.random.default_rng(0))
    times = []
    model.train()
    for i, batch in enumerate(it):
        t = time.perf_counter()
        train_step(model, batch, opt, cfg.train, torch.device("cpu"))
        times.append(time.perf_counter() - t)
        if i + 1 >= steps + 3:
            break
    step_s = float(np.median(times[3:]))
    rows = ds.test
    n = min(2000, len(rows))
    sub = type(rows)(rows.history[:n], rows.target[:n])
    t = time.perf_counter()
    evaluate(model.eval(), sub, batch_size=cfg.train.eval_batch_size)
    eval_rate = n / (time.perf_counter() - t)
    rec = Recommender.load(run_dir)
    hist = [list(ds.to_original(h[h > 0])) for h in rows.history[:requests]]
    lat = []
    for h in hist:
        t = time.perf_counter()
        rec.recommend(h, k=20)
        lat.append(1000 * (time.perf_counter() - t))
    return {"train_step_s": step_s, "eval_rows_per_s": eval_rate,
            "serve_p50_ms": float(np.percentile(lat, 50)), "serve_p95_ms": float(np.percentile(lat, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhihu", type=Path, help="a prepared Zhihu dataset (default: synthetic data of its shape)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "threads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.zhihu or zhihu_like(Path(tmp) / "data")
        ds = PreparedDataset.load(data_dir)
        runs = {}
        for name in CONFIGS:  # a served run of each (one short epoch: speed does not depend on the weights)
            cfg = build_run_config(load_yaml(CONFIGS[name]), str(CONFIGS[name]))
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1, "threads": 2,
                                                                                "health_checks": False})})
            runs[name] = Path(tmp) / name
            train_run(cfg, data_dir, runs[name], progress=False, log=None, dataset=ds)
        results: list[dict[str, Any]] = []
        for load in ("quiet", "second job"):
            stop = mp.Event()
            burner = mp.Process(target=_burn, args=(stop,), daemon=True) if load != "quiet" else None
            if burner:
                burner.start()
                time.sleep(1.0)
            try:
                for name in CONFIGS:
                    for th in args.threads:
                        m = measure(name, ds, data_dir, runs[name], th, args.steps, args.requests)
                        results.append({"model": name, "load": load, "threads": th, **m})
                        print(json.dumps(results[-1]), flush=True)
            finally:
                if burner:
                    stop.set()
                    burner.join(10)
    meta = {"machine": machine(), "command": command_line(), "cores": os.cpu_count(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "data": str(args.zhihu or "synthetic, Zhihu's shape (4,838 items, window 10)")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    lines = ["| model | load | threads | train s/step | eval rows/s | serve p50 ms | serve p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['load']} | {r['threads']} | {r['train_step_s']:.4f} | "
                     f"{r['eval_rows_per_s']:.0f} | {r['serve_p50_ms']:.1f} | {r['serve_p95_ms']:.1f} |")
    lines += ["", f"{meta['machine']}; {meta['date']}; data: {meta['data']}; command: `{meta['command']}`"]
    (args.out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
