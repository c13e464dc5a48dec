"""Training and evaluation speed of DreamRec and SASRec on Zhihu, on this machine, in one process.

    python benchmarks/timing.py --zhihu DIR [--models dreamrec sasrec] [--device cpu] [--threads N]
        [--samplers config ddpm onestep] [--batches 50] [--warmup 5] [--repeat 3] [--set key=value ...] [--quick]
        [--official CHECKOUT [--official-epochs 10]] [--whuir CHECKOUT --beauty-pkl PKL [--diffurec-batches 4]]

For each model (built from its config, initial weights: speed does not depend on them):

* training samples per second: ``--batches`` optimiser steps on the model's real training
  batches (``dreamrec.train.trainer.batches``, each step the trainer's own ``train_step``: loss,
  backward, gradient clipping, step) after ``--warmup`` steps, best of ``--repeat`` such windows (every
  window's rate is kept in the JSON); also the implied seconds per epoch;
* evaluation sequences per second: ``evaluate`` on the whole test split (full ranking), best of
  ``--repeat``; DreamRec at its configured sampler and at each extra ``--samplers`` entry
  (``ddpm`` = all T steps, ``ddim:S``, ``onestep``; ``/loop`` = step by step, where the ``mlp1`` denoiser
  otherwise draws from the chain's closed form, ``dreamrec.diffusion.affine_chain``); the first ``--samplers``
  entry is the one compared with SASRec. ``--set`` overrides DreamRec's config (e.g. the T chosen by Table 1).

``--official`` runs the authors' DreamRec code from a plain checkout in the same invocation, with the same
thread count, before ours (``official_dreamrec.py``), and the speed-up ratios divide by what it measured; without
it no ratio to the authors' code is reported.

``--whuir`` (with ``--beauty-pkl``, the DiffuRec Beauty split) also times DiffuRec side by side with WHUIR/DiffuRec,
in the same invocation and thread count: ``diffurec_official.py --time-batches`` (median seconds per training
batch of 512 on the full split, their modules driven as their trainer does, against our faithful
``configs/diffurec/beauty.yaml`` and our ``beauty-fast.yaml``), about three minutes on one thread.

``--guard`` is the quick regression check (under a minute, one thread, synthetic data, DDIM-10): its committed
``results/timing/guard.json`` shows a slowdown in review, and each run prints the change against it.

Writes ``benchmarks/results/timing/{dataset}.json`` and ``benchmarks/TIMING.md`` (``--quick``:
synthetic data, written to runs/quick/timing). Configs: ``configs/dreamrec/zhihu.yaml`` and
``configs/sasrec/zhihu-ce.yaml`` unless ``--config MODEL=PATH``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, ROOT  # noqa: E402
from dreamrec_sampling import label, timed_evaluate  # noqa: E402
from dreamrec_table1 import QUICK_DIR, prepare_zhihu, quick_data  # noqa: E402
from official_dreamrec import run_official  # noqa: E402

from dreamrec.config import apply_overrides, build_run_config, load_yaml  # noqa: E402
from dreamrec.data.batching import n_pairs, n_seq2seq  # noqa: E402
from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.train.run import resolve  # noqa: E402
from dreamrec.train.trainer import batches, make_optimizer, seed_everything, train_step  # noqa: E402

CONFIGS = {"dreamrec": ROOT.parent / "configs/dreamrec/zhihu.yaml",
           "sasrec": ROOT.parent / "configs/sasrec/zhihu-ce.yaml"}


def train_speed(model: torch.nn.Module, ds: PreparedDataset, cfg: Any, n: int, warmup: int,
                repeat: int = 1) -> dict[str, float]:
    """Samples per second over ``n`` training steps after ``warmup``, best of ``repeat`` windows of
    ``n`` consecutive steps (as evaluation is best of its repeats; new epochs start as needed). A sample
    is a batch row: a (history, next item) pair, or for a ``seq2seq`` model a window with a label at
    every position, and ``s_per_epoch`` counts the epoch in those rows."""
    device = torch.device(cfg.train.device)
    model.to(device).train()
    opt = make_optimizer(model, cfg.train)
    rng = np.random.default_rng(0)
    it = iter(())
    windows: list[tuple[int, float, float]] = []
    samples, t0, c0 = 0, 0.0, 0.0
    for step in range(warmup + n * repeat):
        if step >= warmup and (step - warmup) % n == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step > warmup:
                windows.append((samples, time.perf_counter() - t0, time.process_time() - c0))
            samples, t0, c0 = 0, time.perf_counter(), time.process_time()
        batch = next(it, None)
        if batch is None:
            it = batches(model, ds, cfg.train.batch_size, cfg.train.max_len, rng)[0]
            batch = next(it)
        batch = batch.to(device)
        train_step(model, batch, opt, cfg.train, device)
        samples += int(batch.target.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    windows.append((samples, time.perf_counter() - t0, time.process_time() - c0))
    samples, wall, cpu = max(windows, key=lambda w: w[0] / w[1])
    per_epoch = n_seq2seq(ds.train, cfg.train.max_len) if model.batch_mode == "seq2seq" else n_pairs(ds.train)
    return {"samples_per_s": samples / wall, "cpu_s_per_1k_samples": 1000 * cpu / samples,
            "epoch_samples": per_epoch, "s_per_epoch": per_epoch * wall / samples, "batches": n,
            "repeats": len(windows), "all_samples_per_s": [w[0] / w[1] for w in windows],
            "batch_size": cfg.train.batch_size}


def parse_sampler(text: str, cfg: Any) -> tuple[str, int | None, bool]:
    """``config`` | ``ddpm`` | ``ddim:S`` | ``onestep``, each optionally ``/loop`` -> (sampler, steps; None = all
    T, loop). ``/loop`` runs the step-by-step reverse process even where the closed form applies (``mlp1``)."""
    text, _, loop = text.partition("/")
    if loop not in ("", "loop"):
        raise ValueError(f"unknown sampler suffix /{loop} (expected /loop)")
    if text == "config":
        return cfg.sampler, cfg.sampler_steps, bool(loop)
    name, _, steps = text.partition(":")
    return name, int(steps) if steps else None, bool(loop)


def markdown(rec: dict[str, Any]) -> str:
    lines = [
        "# Timing: DreamRec and SASRec (and DiffuRec), side by side with the authors' code", "",
        f"Generated by `{rec['command']}` on {rec['date']}.", "",
        f"Machine: {rec['machine']}; device {rec['device']}, {rec['threads']} torch thread(s). "
        f"Dataset {rec['dataset']}: {rec['n_train']} training samples per epoch, {rec['n_test']} test sequences. "
        "Training: optimiser steps on the model's real batches after warm-up, initial weights, best of the repeats. "
        "Evaluation: full ranking of the test split, best of the repeats.", "",
        "| model | sampler | train samples/s | s per epoch | eval seq/s | eval s per 1k (wall) | eval CPU s per 1k |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        tr, ev = r["train"], r["eval"]
        lines.append(f"| {r['model']} | {r.get('sampler', '—')} | {tr['samples_per_s']:,.0f} | {tr['s_per_epoch']:.2f} | "
                     f"{ev['seq_per_s']:,.0f} | {ev['wall_s_per_1k']:.3f} | {ev['cpu_s_per_1k']:.3f} |")
    off = rec.get("official")
    if off:
        ev = (f"; its validation pass (500-step DDPM) {off['eval_s_per_1k']:.2f} s per 1,000 sequences"
              if "eval_s_per_1k" in off else "")
        lines += ["", f"The authors' DreamRec code, run in the same invocation ({off['threads']} thread(s), "
                  f"`{off['command']}`): {off['train_samples_per_s']:,.0f} training samples/s, "
                  f"{off['s_per_epoch']:.2f} s per epoch of {off['epoch_samples']:,}{ev}."]
    else:
        lines += ["", "The authors' code was not run in this invocation (`--official CHECKOUT`): no speed-up is reported."]
    for k, v in rec.get("ratios", {}).items():
        lines.append(f"- {k}: {v:.2f}")
    if any("closed form" in (r.get("sampler") or "") for r in rec["rows"]):
        lines += ["", "A `closed form` row draws `x_0` from the exact output law of the whole reverse process (DreamRec's "
                  "`mlp1` denoiser is affine in `x_t`: `src/dreamrec/diffusion/affine_chain.py`, the default); a `loop` "
                  "row runs the same sampler step by step. Same distribution, other noise draws: "
                  "`benchmarks/results/timing/closed_form_zhihu.json` compares their test metrics on a trained run."]
    lines += ["", "Where a training step's time goes: `benchmarks/results/timing/profile_dreamrec-zhihu.md` "
              "(`benchmarks/profile_step.py`)."]
    du = rec.get("diffurec")
    if du:
        t = du["timing"]
        official = t["official DiffuRec"]["seconds_per_batch"]
        lines += ["", "## DiffuRec and WHUIR/DiffuRec, same invocation", "",
                  f"`{du['command']}` ({du['settings']['users']:,} Beauty users, batch 512, {du['settings']['threads']} "
                  f"thread(s); median of {du['settings']['time_batches']} training batches after one of warm-up, "
                  f"{t['official DiffuRec']['n_batches_per_epoch']} batches per epoch).", "",
                  "| implementation | config | s per batch | s per epoch | speed-up over the authors' code |",
                  "|---|---|---|---|---|"]
        n = t["official DiffuRec"]["n_batches_per_epoch"]
        for key, r in t.items():
            if "DiffuRec" in key and "Sys" not in key:
                sec = r["seconds_per_batch"]
                lines.append(f"| {key} | {r.get('config', 'their main.py defaults')} | {sec:.2f} | {sec * n / 60:.1f} min | "
                             f"{official / sec:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhihu", type=Path, help="DreamRec Zhihu split directory (*_data.df)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="where the prepared data is kept")
    ap.add_argument("--models", nargs="+", default=["dreamrec", "sasrec"], choices=sorted(CONFIGS))
    ap.add_argument("--config", nargs="*", default=[], help="MODEL=PATH to replace a model's config")
    ap.add_argument("--samplers", nargs="*", default=["config", "ddpm", "onestep"],
                    help="DreamRec evaluation samplers: config | ddpm | ddim:S | onestep, each optionally /loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's choice)")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "timing")
    ap.add_argument("--md", type=Path, default=ROOT / "TIMING.md")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="DreamRec key=value overrides (e.g. timesteps=200)")
    ap.add_argument("--official", type=Path, default=None,
                    help="plain checkout of YangZhengyi98/DreamRec: run it in this invocation for the speed-up ratios")
    ap.add_argument("--official-epochs", type=int, default=3, help=">= 10 also times the authors' validation pass")
    ap.add_argument("--whuir", type=Path, default=None,
                    help="plain checkout of WHUIR/DiffuRec: time DiffuRec side by side with it (needs --beauty-pkl)")
    ap.add_argument("--beauty-pkl", type=Path, default=None, help="the DiffuRec Beauty split (beauty.pkl)")
    ap.add_argument("--diffurec-batches", type=int, default=4, help="training batches timed per DiffuRec side")
    ap.add_argument("--quick", action="store_true", help="synthetic data, few batches, written to runs/quick/timing")
    ap.add_argument("--guard", action="store_true",
                    help="the regression guard (under a minute): synthetic data, one thread, DDIM-10; writes the "
                    "committed results/timing/guard.{json,md} and prints the change against the committed one")
    args = ap.parse_args()
    overrides = [f"train.device={args.device}", *args.overrides]
    previous = None
    if args.guard:
        dataset, data_dir = "guard", quick_data(QUICK_DIR)
        args.md = args.out / "guard.md"
        args.batches, args.warmup, args.repeat, args.threads = 30, 5, 3, 1
        args.samplers = ["ddim:10"]
        if (args.out / "guard.json").exists():
            previous = json.loads((args.out / "guard.json").read_text())
    elif args.quick:
        dataset, data_dir = "synthetic", quick_data(QUICK_DIR)
        args.out, args.md = QUICK_DIR / "timing", QUICK_DIR / "timing" / "TIMING.md"
        args.batches, args.warmup, args.repeat = min(args.batches, 10), min(args.warmup, 2), 1
        overrides.append("timesteps=50")
    elif args.zhihu is None:
        ap.error("--zhihu DIR is required (or --quick)")
    else:
        dataset, data_dir = "zhihu", prepare_zhihu(args.zhihu, args.work)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = None
    if args.official is not None:
        if dataset != "zhihu":
            ap.error("--official needs --zhihu (the authors' code runs on their Zhihu folder)")
        print(f"running the authors' code for {args.official_epochs} epochs ...", flush=True)
        official = run_official(args.official, args.zhihu, args.official_epochs, args.threads or torch.get_num_threads())
        print(f"authors' code: {official['train_samples_per_s']:,.0f} samples/s ({official['s_per_epoch']:.2f} s/epoch)",
              flush=True)
    diffurec = None
    if args.whuir is not None:
        if args.beauty_pkl is None:
            ap.error("--whuir needs --beauty-pkl (the DiffuRec Beauty split)")
        diffurec = time_diffurec(args.whuir, args.beauty_pkl, args.diffurec_batches,
                                 args.threads or torch.get_num_threads(), args.out)
    configs = {**CONFIGS, **dict(c.split("=", 1) for c in args.config)}
    ds = PreparedDataset.load(data_dir)
    rows: list[dict[str, Any]] = []
    for name in args.models:
        raw = apply_overrides(load_yaml(configs[name]), overrides if name == "dreamrec" else overrides[:1])
        seed_everything(0)
        cfg, model = resolve(build_run_config(raw, str(configs[name])), ds)
        tr = train_speed(model, ds, cfg, args.batches, args.warmup, args.repeat)
        samplers = [parse_sampler(s, model.config) for s in args.samplers] if name == "dreamrec" else [None]
        for s in dict.fromkeys(samplers):  # unique, in order
            row: dict[str, Any] = {"model": name, "config": str(configs[name]), "train": tr}
            if s is not None:
                model.set_sampler(s[0], s[1])
                model.config = model.config.model_copy(update={"closed_form": not s[2]})
                T = model.config.timesteps
                steps = 1 if s[0] == "onestep" else (s[1] or T)
                how = " closed form" if model.output_law(torch.device(args.device), torch.float32) else (
                    " loop" if s[0] != "onestep" else "")
                row.update(sampler=label(s[0], steps) + how + f" (T={T}, w={model.config.guidance_w:g})",
                           default=s == samplers[0])
            row["eval"] = timed_evaluate(model, ds.test, batch_size=cfg.train.eval_batch_size, device=args.device,
                                         repeat=args.repeat)
            row["eval"].pop("metrics")  # untrained weights: the speed is what counts here
            print(f"{name:9s} {row.get('sampler', ''):28s} train {tr['samples_per_s']:9,.0f} samples/s "
                  f"({tr['s_per_epoch']:.2f} s/epoch)  eval {row['eval']['seq_per_s']:9,.0f} seq/s "
                  f"({row['eval']['wall_s_per_1k']:.3f} s/1k)", flush=True)
            rows.append(row)
    rec = {"dataset": dataset, "device": args.device, "threads": torch.get_num_threads(), "rows": rows,
           "n_train": n_pairs(ds.train), "n_test": len(ds.test), "command": command_line(), "machine": machine(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    by = {(r["model"], r.get("default", True)): r for r in rows}
    if ("dreamrec", True) in by and ("sasrec", True) in by:
        d, s = by[("dreamrec", True)], by[("sasrec", True)]
        rec["ratios"] = {"DreamRec / SASRec evaluation time, configured sampler (target <= 1.5)":
                         d["eval"]["wall_s_per_1k"] / s["eval"]["wall_s_per_1k"]}
    if ("dreamrec", True) in by and official:
        d = by[("dreamrec", True)]
        rec["official"] = official
        rec["ratios"] = {**rec.get("ratios", {}),
                         "DreamRec training speed-up over the authors' code, same invocation (target >= 10)":
                         d["train"]["samples_per_s"] / official["train_samples_per_s"]}
        if "eval_s_per_1k" in official:
            for r in rows:
                if r["model"] == "dreamrec":
                    rec["ratios"][f"DreamRec evaluation speed-up over the authors' 500-step DDPM, {r['sampler']}"] = (
                        official["eval_s_per_1k"] / r["eval"]["wall_s_per_1k"])
    if diffurec is not None:
        rec["diffurec"] = diffurec
        t = diffurec["timing"]
        base = t["official DiffuRec"]["seconds_per_batch"]
        rec["ratios"] = {**rec.get("ratios", {}),
                         "DiffuRec faithful (configs/diffurec/beauty.yaml) training speed-up over WHUIR/DiffuRec, same "
                         "invocation (target >= 1)": base / t["ours DiffuRec"]["seconds_per_batch"],
                         "DiffuRec fast (configs/diffurec/beauty-fast.yaml) training speed-up over WHUIR/DiffuRec":
                         base / t["ours DiffuRec (fast)"]["seconds_per_batch"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{dataset}.json"
    path.write_text(json.dumps(rec, indent=2))
    args.md.write_text(markdown(rec))
    print(markdown(rec))
    if previous is not None:
        print(guard_change(previous, rec))
    print("wrote", path, args.md)


def time_diffurec(whuir: Path, pkl: Path, n_batches: int, threads: int, out: Path) -> dict[str, Any]:
    """Seconds per training batch of WHUIR/DiffuRec and of our faithful and fast DiffuRec configs, from
    ``diffurec_official.py --time-batches`` run now (its JSON, ``diffurec_timing.json`` in ``out``)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, str(ROOT / "diffurec_official.py"), "--whuir", str(whuir), "--pkl", str(pkl),
               "--time-batches", str(n_batches), "--fast", "--threads", str(threads), "--work", work,
               "--name", "diffurec_timing", "--out", str(out)]
        print("timing DiffuRec side by side with WHUIR/DiffuRec ...", flush=True)
        subprocess.run(cmd, check=True)
    rec = json.loads((out / "diffurec_timing.json").read_text())
    shown = [("WORK" if a == work else a) for a in cmd[2:]]
    rec["command"] = " ".join(["python benchmarks/diffurec_official.py", *shown])
    return rec


def guard_change(previous: dict[str, Any], rec: dict[str, Any]) -> str:
    """Each row's training and evaluation rate against the committed guard (negative: slower)."""
    old = {(r["model"], r.get("sampler")): r for r in previous["rows"]}
    lines = [f"change against the committed guard of {previous['date']}:"]
    for r in rec["rows"]:
        o = old.get((r["model"], r.get("sampler")))
        if o is None:
            continue
        tr = r["train"]["samples_per_s"] / o["train"]["samples_per_s"] - 1
        ev = r["eval"]["seq_per_s"] / o["eval"]["seq_per_s"] - 1
        flag = "  <- slower by more than 15 %" if min(tr, ev) < -0.15 else ""
        lines.append(f"  {r['model']:9s} {r.get('sampler') or '':24s} train {tr:+.0%}  eval {ev:+.0%}{flag}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
