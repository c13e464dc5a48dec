"""Exact vs FAISS retrieval on a large synthetic catalog whose embeddings look trained.

Items are drawn from a Gaussian mixture (``--centres`` centres with Zipf-like sizes, per-item
noise, log-normal norms, like learned tables where popular items have larger norms); queries are
item embeddings plus noise. Reports recall@k of FAISS against exact top-k, ms/query for batch-1
queries and for one batch, build time and memory (index bytes vs the float32 matrix), for a sweep
of ``nprobe``. Single-threaded by default; stops by itself (a few minutes at most).

    python benchmarks/faiss_catalog.py                      # 1,000,000 x 64, IVF4096,Flat
    python benchmarks/faiss_catalog.py --n 100000 --out /tmp/small.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dreamrec.retrieval.exact import ExactIndex  # noqa: E402
from dreamrec.retrieval.faiss_index import FaissIndex  # noqa: E402
from serve_load import machine_info, write_serving_md  # noqa: E402


def make_catalog(n: int, d: int, centres: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(items [n, d], queries [n_queries, d]) float32, clustered like a trained item table."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32) / np.sqrt(d)
    sizes = 1.0 / np.arange(1, centres + 1) ** 0.7  # a few big clusters, a long tail
    assign = rng.choice(centres, size=n, p=sizes / sizes.sum())
    items = c[assign] + 0.35 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    items *= rng.lognormal(0.0, 0.3, size=(n, 1)).astype(np.float32)  # norms vary like learned tables
    base = items[rng.choice(n, size=n_queries, replace=False)]
    queries = base + 0.25 * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(d)
    return np.ascontiguousarray(items, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def per_query_ms(search, queries: np.ndarray) -> dict[str, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - t) * 1e3)
    return {"mean": float(np.mean(times)), "p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def batch_ms(search, queries: np.ndarray) -> float:
    t = time.perf_counter()
    search(queries)
    return (time.perf_counter() - t) * 1e3 / len(queries)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--centres", type=int, default=3000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--queries", type=int, default=500, help="queries for recall and the batch timing")
    p.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--spec", default="IVF4096,Flat", help="FAISS index_factory string")
    p.add_argument("--nprobes", default="4,8,16,32,64")
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faiss/catalog_1m_d64.json")
    args = p.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    items, queries = make_catalog(args.n, args.d, args.centres, args.queries, args.seed)
    print(f"catalog {items.shape} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    exact = ExactIndex(torch.from_numpy(items))
    exact_search = lambda q: exact.search(torch.from_numpy(q), args.k)  # noqa: E731
    truth = exact_search(queries)[1].numpy()
    exact_row = {
        "ms_per_query_batch1": per_query_ms(exact_search, queries[: args.single]),
        "ms_per_query_batched": batch_ms(exact_search, queries),
        "bytes": exact.nbytes(),
    }
    print(f"exact: {exact_row}", file=sys.stderr)

    t = time.perf_counter()
    index = FaissIndex(items, spec=args.spec, train_size=args.train_size, seed=args.seed)
    build_s = time.perf_counter() - t
    print(f"faiss {args.spec} built in {build_s:.1f}s", file=sys.stderr)
    rows = []
    for nprobe in [int(x) for x in args.nprobes.split(",")]:
        index.set_search_params(nprobe=nprobe)
        search = lambda q: index.search(torch.from_numpy(q), args.k)  # noqa: E731
        row = {
            "nprobe": nprobe,
            f"recall@{args.k}": recall(search(queries)[1].numpy(), truth),
            "ms_per_query_batch1": per_query_ms(search, queries[: args.single]),
            "ms_per_query_batched": batch_ms(search, queries),
        }
        row["speedup_batch1"] = exact_row["ms_per_query_batch1"]["mean"] / row["ms_per_query_batch1"]["mean"]
        row["speedup_batched"] = exact_row["ms_per_query_batched"] / row["ms_per_query_batched"]
        rows.append(row)
        print(f"faiss nprobe={nprobe}: {row}", file=sys.stderr)
    ok = [r for r in rows if r[f"recall@{args.k}"] >= args.target_recall]
    chosen = min(ok, key=lambda r: r["ms_per_query_batch1"]["mean"]) if ok else None
    result = {
        "benchmark": "faiss_catalog",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "machine": {**machine_info(), "loadavg_at_start": load_before, "threads": args.threads},
        "catalog": {"n": args.n, "d": args.d, "centres": args.centres, "queries": args.queries,
                    "single_queries": args.single, "k": args.k, "seed": args.seed},
        "exact": exact_row,
        "faiss": {"spec": index.spec, "build_seconds": build_s, "train_size": args.train_size,
                  "bytes": index.nbytes(), "sweep": rows},
        "chosen": chosen,
        "target": {"recall": args.target_recall, "speedup": 5.0,
                   "met": bool(chosen and chosen["speedup_batch1"] >= 5.0)},
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_serving_md()
    print(json.dumps({"chosen": chosen, "met": result["target"]["met"]}, indent=2))


if __name__ == "__main__":
    main()
