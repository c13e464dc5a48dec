"""Diffusion recommenders' accuracy against sampling cost (and guidance strength), for one trained run.

    python benchmarks/dreamrec_sampling.py --run RUN_DIR --data DATA_DIR [--w 0 2 4 6 8 10]
        [--S 1 2 5 10 20 50 100] [--name zhihu] [--threads 1] [--out DIR] [--quick]

Works for any model with ``set_sampler`` (DreamRec, DiffuRec / DiffuRecSys); the guidance-strength
part only for models with a ``guidance_w`` (DreamRec). DiffuRec on Zhihu:

    python benchmarks/dreamrec_sampling.py --run runs/bench/runs/zhihu/zhihu-diffurec/seed0 \
        --data runs/bench/data/zhihu --name zhihu-diffurec --out benchmarks/results/diffurec_sampling

Samplers are changed at inference on the loaded model (``set_sampler``), no retraining:
DDPM with all T steps (the paper's Algorithm 2), DDIM (eta 0) with each S <= T, one-step. Each is
evaluated on BOTH the validation and the test split at the run's w: HR@20 / NDCG@20 of each, and
the seconds per 1,000 test sequences (CPU seconds of this process and wall seconds). The default
sampler is chosen on VALIDATION only: the cheapest (fewest network calls) whose validation HR@20
is within ``--tolerance`` (2 %) relative of the best validation HR@20; its test metrics are then
reported at that setting (test never enters the choice). Then every w is evaluated (both splits)
with DDPM and with that default sampler. The JSON keeps val and test for every point; the plots
show test metrics, with the default marked as chosen on validation. Writes ``{name}.json``,
``{name}_w.png`` (test metric vs w, the paper's Figure 4) and ``{name}_cost.png`` (test metric vs
sampler, seconds per 1,000 on the second axis) to
``benchmarks/results/dreamrec_sampling/`` (``--quick``: trains a tiny synthetic run and writes
to runs/quick/sampling). Evaluation noise is seeded (``--eval-seed``), so metrics are deterministic.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402
from dreamrec_table1 import QUICK_DIR, QUICK_SET, fmt_w, quick_data  # noqa: E402

from dreamrec.data.dataset import PreparedDataset, SampleRows  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

OUT = RESULTS / "dreamrec_sampling"


def timed_evaluate(
    model: torch.nn.Module, rows: SampleRows, *, batch_size: int = 1024, device: str = "cpu", seed: int = 0,
    repeat: int = 1,
) -> dict[str, Any]:
    """Test metrics plus seconds per 1,000 sequences (best of ``repeat``): ``cpu_s_per_1k`` = CPU
    time of this process (all its threads), ``wall_s_per_1k`` = elapsed time; ``seq_per_s`` from wall."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        metrics = evaluate(model, rows, batch_size=batch_size, device=device, seed=seed)
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    k = len(rows) / 1000
    return {"HR@20": metrics["HR@20"], "NDCG@20": metrics["NDCG@20"], "metrics": metrics, "n": len(rows),
            "cpu_s_per_1k": min(cpu) / k, "wall_s_per_1k": min(wall) / k, "seq_per_s": len(rows) / min(wall)}


def sampler_grid(T: int, S: list[int]) -> list[tuple[str, int]]:
    """(sampler, network calls), cheapest first: one-step, DDIM with each S <= T, DDPM with T."""
    return [("onestep", 1), *[("ddim", s) for s in sorted(set(S)) if s <= T], ("ddpm", T)]


def label(sampler: str, steps: int) -> str:
    return {"onestep": "one-step", "ddim": f"DDIM-{steps}", "ddpm": f"DDPM-{steps}"}[sampler]


def pick_default(points: list[dict[str, Any]], tolerance: float, split: str = "val") -> dict[str, Any]:
    """The cheapest point (fewest steps, then fewest seconds) within ``tolerance`` of the best
    HR@20 on ``split`` (the validation split: the test split must not take part in the choice)."""
    best = max(p[split]["HR@20"] for p in points)
    ok = [p for p in points if p[split]["HR@20"] >= (1 - tolerance) * best]
    return min(ok, key=lambda p: (p["steps"], p["cpu_s_per_1k"]))


def plot(result: dict[str, Any], out: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sec = "cpu_s_per_1k" if result["device"] == "cpu" else "wall_s_per_1k"
    sec_label = "CPU" if sec == "cpu_s_per_1k" else "wall"
    title = {"dreamrec": "DreamRec", "diffurec": "DiffuRec"}.get(result.get("model", "dreamrec"), result.get("model"))
    if result.get("config", {}).get("cross_attention"):
        title = "DiffuRecSys (cross-attention)"
    paths = []
    if result["w_curves"]:
        paths.append(_plot_w(result, out, name, title, plt))
    paths.append(_plot_cost(result, out, name, title, plt, sec, sec_label))
    return paths


def _plot_w(result: dict[str, Any], out: Path, name: str, title: str, plt: Any) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("HR@20", "NDCG@20")):
        for curve, pts in result["w_curves"].items():
            ax.plot([p["w"] for p in pts], [100 * p["test"][metric] for p in pts], "o-", label=curve)
        ax.set_xlabel("guidance strength w")
        ax.set_ylabel(f"test {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{title} on {name}: test accuracy vs guidance strength (T={result['T']}; "
                 f"default sampler chosen on validation)")
    fig.tight_layout()
    p_w = out / f"{name}_w.png"
    fig.savefig(p_w, dpi=120)
    plt.close(fig)
    return p_w


def _plot_cost(result: dict[str, Any], out: Path, name: str, title: str, plt: Any, sec: str, sec_label: str) -> Path:
    pts = result["samplers"]
    x = range(len(pts))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [100 * p["test"]["HR@20"] for p in pts], "o-", label="test HR@20")
    ax.plot(x, [100 * p["test"]["NDCG@20"] for p in pts], "s-", label="test NDCG@20")
    d = next(i for i, p in enumerate(pts) if p["label"] == result["default"]["label"])
    ax.axvline(d, color="gray", ls=":", label=f"default (chosen on val HR@20): {result['default']['label']}")
    ax.set_xticks(list(x), [p["label"] for p in pts], rotation=30)
    ax.set_ylabel("test metric (%)")
    ax.set_xlabel("sampler" if result["w"] is None else f"sampler (w={fmt_w(result['w'])})")
    ax2 = ax.twinx()
    ax2.bar(x, [p[sec] for p in pts], alpha=0.2, color="C3", label=f"{sec_label} s / 1k seqs")
    ax2.set_yscale("log")
    ax2.set_ylabel(f"{sec_label} seconds per 1,000 test sequences (log)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center left", fontsize=8)
    ax.set_title(f"{title} on {name}: test accuracy and sampling cost ({result['threads']} thread(s));\n"
                 f"default = cheapest within {100 * result['tolerance']:g} % of the best validation HR@20",
                 fontsize=10)
    fig.tight_layout()
    p_c = out / f"{name}_cost.png"
    fig.savefig(p_c, dpi=120)
    plt.close(fig)
    return p_c


def quick_run(work: Path) -> Path:
    """A tiny trained synthetic run (T = 20) for --quick."""
    from dreamrec.config import apply_overrides, build_run_config, load_yaml
    from dreamrec.train.run import train_run

    run_dir = work / "sampling" / "run"
    if not (run_dir / "metrics.json").exists():
        raw = apply_overrides(load_yaml(Path(__file__).resolve().parents[1] / "configs/dreamrec/zhihu.yaml"),
                              [*QUICK_SET, "timesteps=20", "train.seed=0"])
        train_run(build_run_config(raw), quick_data(work), run_dir, progress=False, log=None)
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained run directory (DreamRec, DiffuRec, ...)")
    ap.add_argument("--data", type=Path, help="its prepared data directory")
    ap.add_argument("--w", type=float, nargs="+", default=[0, 2, 4, 6, 8, 10])
    ap.add_argument("--S", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    ap.add_argument("--name", default="zhihu", help="file name stem (the dataset)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="relative HR@20 loss allowed for the default")
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="time each evaluation this many times (best kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds are per process)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quick", action="store_true", help="tiny synthetic run, written to runs/quick/sampling")
    args = ap.parse_args()
    if args.quick:
        args.run, args.data, args.name = quick_run(QUICK_DIR), quick_data(QUICK_DIR), "synthetic"
        args.out = QUICK_DIR / "sampling" if args.out == OUT else args.out
        args.S = [1, 2, 5, 10] if args.S == ap.get_default("S") else args.S
    elif args.run is None or args.data is None:
        ap.error("--run and --data are required (or --quick)")
    torch.set_num_threads(args.threads)
    run = load_run(args.run, args.device)
    ds = PreparedDataset.load(args.data)
    model, splits = run.model, {"val": ds.split("val"), "test": ds.split("test")}
    cfg = model.config
    guided = "guidance_w" in type(cfg).model_fields
    T, w_run, bs = cfg.timesteps, (cfg.guidance_w if guided else None), run.config.train.eval_batch_size

    def measure(sampler: str, steps: int, w: float | None) -> dict[str, Any]:
        """Metrics on val and test; the seconds per 1,000 sequences are the test split's."""
        extra = {"guidance_w": w} if guided else {}
        model.set_sampler(sampler, None if sampler == "onestep" else steps, eta=0.0, **extra)
        ev = {sp: timed_evaluate(model, rows, batch_size=bs, device=args.device, seed=args.eval_seed,
                                 repeat=args.repeat if sp == "test" else 1) for sp, rows in splits.items()}
        r: dict[str, Any] = {"sampler": sampler, "steps": steps, "w": w, "label": label(sampler, steps)}
        for sp, e in ev.items():
            r[sp] = {k: e[k] for k in ("HR@20", "NDCG@20", "metrics", "n")}
        r.update({k: ev["test"][k] for k in ("cpu_s_per_1k", "wall_s_per_1k", "seq_per_s")}, timed_split="test")
        print(f"{r['label']:>9s} w={'-' if w is None else fmt_w(w):<4s} val HR@20 {100 * r['val']['HR@20']:.2f}  "
              f"test HR@20 {100 * r['test']['HR@20']:.2f}  NDCG@20 {100 * r['test']['NDCG@20']:.2f}  "
              f"CPU {r['cpu_s_per_1k']:.3f} s/1k  wall {r['wall_s_per_1k']:.3f} s/1k", flush=True)
        return r

    points = [measure(s, n, w_run) for s, n in sampler_grid(T, args.S)]
    default = pick_default(points, args.tolerance, "val")
    print(f"default sampler (chosen on validation): {default['label']} "
          f"(best val HR@20 {100 * max(p['val']['HR@20'] for p in points):.2f}, tolerance {100 * args.tolerance:g} %; "
          f"its val HR@20 {100 * default['val']['HR@20']:.2f}, test HR@20 {100 * default['test']['HR@20']:.2f})")
    curves: dict[str, list[dict[str, Any]]] = {}
    for s, n in [("ddpm", T), (default["sampler"], default["steps"])]:  # the paper's sampler and the default
        if guided and args.w and label(s, n) not in curves:
            curves[label(s, n)] = [measure(s, n, w) for w in args.w]
    result = {
        "name": args.name, "model": run.config.model, "run": str(args.run), "data": str(args.data),
        "splits": ["val", "test"],
        "selected_on": "val", "T": T, "w": w_run,
        "config": cfg.model_dump(mode="json"), "tolerance": args.tolerance, "eval_seed": args.eval_seed,
        "samplers": points,
        "default": {**{k: default[k] for k in ("sampler", "steps", "label")},
                    "val": {k: default["val"][k] for k in ("HR@20", "NDCG@20")},
                    "test": {k: default["test"][k] for k in ("HR@20", "NDCG@20")}},
        "w_curves": curves, "device": args.device, "threads": torch.get_num_threads(),
        "command": command_line(), "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2))
    print("wrote", path, *plot(result, args.out, args.name))


if __name__ == "__main__":
    main()
