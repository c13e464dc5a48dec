"""iDreamRec on ML-1M: accuracy by sampler, intentions, cold-start items (issue items 6-8).

    python benchmarks/idreamrec_ml1m.py --data DATA_DIR [--seeds 0 1 2] [--config configs/idreamrec/ml-1m.yaml]
        [--threads N] [--out DIR] [--quick]

``DATA_DIR`` is a prepared leave-one-out ML-1M dataset whose item metadata comes from movies.dat
(title, year, genres). For each seed it trains iDreamRec, then on the test split reports

* HR/NDCG@5/10/20 with one-step generation and DDIM with S = 5 and 20 (same weights, samplers
  changed at inference) -- DreamRec and SASRec on the same split come from benchmarks/baselines.py;
* intentions: for every test row, intention = one genre of the target (``"a Comedy movie"``, the
  first listed genre), HR@10 with and without it and the share of the top 10 carrying that genre;
* cold start: a second model trained with 10 % of the items held out of training
  (:func:`dreamrec.eval.coldstart.cold_start_split`), HR@20 on test rows whose target is cold,
  against popularity and a random ranking.

Each finished seed is written to ``benchmarks/results/idreamrec_ml1m/{name}.seed{s}.json`` (so seeds can
run as parallel processes, ``--seeds 1``), and the seeds asked for are aggregated into ``{name}.json``;
``--merge`` only aggregates the per-seed files already there. ``--set key=value ...`` overrides the config
(e.g. ``train.device=cuda``). ``--quick`` runs everything on small
synthetic data (intention = the target topic's words, hashing text encoder) into runs/quick/idreamrec.
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

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.config import apply_overrides, build_run_config, load_yaml  # noqa: E402
from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.coldstart import cold_start_split, evaluate_cold_start  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.eval.intents import evaluate_with_intents
from dreamrec.models.idreamrec import IDreamRec, IDreamRecConfig  # noqa: E402
from dreamrec.data.synthetic import topic_text  # noqa: E402
from dreamrec.train.trainer import seed_everything, train  # noqa: E402

KS = (5, 10, 20)
SAMPLERS: list[tuple[str, str, int | None]] = [("onestep", "onestep", None), ("ddim5", "ddim", 5), ("ddim20", "ddim", 20)]
QUICK_PARAMS = dict(text_encoder="hashing:32", hidden=32, n_layers=1, n_heads=2, timesteps=100, beta_end=0.2,
                    intent_source="topic", guidance_w=1.0, intent_rho=1.0, text_template=None)
QUICK_TRAIN = dict(epochs=6, batch_size=128, lr=3e-3, patience=100, eval_every=100, max_len=10)


def fit(dataset: PreparedDataset, raw: dict[str, Any], seed: int, out: Path) -> tuple[IDreamRec, dict[str, Any]]:
    """Train iDreamRec (config ``raw``) on ``dataset`` with ``seed`` (weights in ``out``); also returns
    how the training ended (epochs, best epoch, whether ``train.max_minutes`` stopped it)."""
    cfg = build_run_config(apply_overrides(raw, [f"train.seed={seed}"]), "idreamrec")
    seed_everything(seed)
    max_len = cfg.train.max_len or dataset.max_len
    model = IDreamRec(dataset.n_items, max_len, IDreamRecConfig(**cfg.params))
    r = train(model, dataset, cfg.train.model_copy(update={"max_len": max_len}), out, progress=False, log=print)
    return model, {"epochs_trained": len(r.history), "best_epoch": r.best_epoch, "stopped_by_budget": r.stopped_by_budget}


def genre_intents(dataset: PreparedDataset) -> tuple[list[str], list[set[str]]]:
    """(per test row: ``"a {first genre of the target} movie"``, per item: its genre set)."""
    meta = dataset.item_meta
    assert meta is not None and "genres" in meta.columns, "ML-1M item metadata (genres) required"
    genres = [set(str(g).split("|")) if isinstance(g, str) else set() for g in meta["genres"]]
    first = [str(meta["genres"].iloc[j - 1]).split("|")[0] for j in dataset.test.target]
    return [f"a {g} movie" for g in first], genres


def run_seed(dataset: PreparedDataset, raw: dict[str, Any], seed: int, runs: Path, quick: bool,
             topic: np.ndarray | None) -> dict[str, Any]:
    t0 = time.time()
    model, how = fit(dataset, raw, seed, runs / f"seed{seed}")
    res: dict[str, Any] = {"seed": seed, "train_seconds": time.time() - t0, "training": {"model": how}, "samplers": {}}
    rows = dataset.test
    for label, sampler, steps in SAMPLERS:
        model.set_sampler(sampler, steps)
        m = evaluate_with_intents(model, rows, None, ks=KS, seed=seed)
        res["samplers"][label] = {k: v for k, v in m.items() if k.startswith(("HR", "NDCG"))}
    model.set_sampler("onestep")
    if quick:
        assert topic is not None
        intents = [topic_text(int(topic[j - 1])) for j in rows.target]
        carries = lambda top, i: topic[top - 1] == topic[rows.target[i] - 1]  # noqa: E731
    else:
        intents, genres = genre_intents(dataset)
        carries = lambda top, i: np.array([intents[i][2:-6] in genres[j - 1] for j in top])  # noqa: E731
    base = evaluate_with_intents(model, rows, None, ks=(10,), seed=seed, return_topk=10)
    withi = evaluate_with_intents(model, rows, intents, ks=(10,), seed=seed, return_topk=10)
    share = lambda r: float(np.mean([carries(r["topk"][i], i).mean() for i in range(len(rows))]))  # noqa: E731
    res["intent"] = {"HR@10_without": base["HR@10"], "HR@10_with": withi["HR@10"],
                     "share_top10_with_intent_without": share(base), "share_top10_with_intent_with": share(withi)}
    cold_ds, cold = cold_start_split(dataset, frac=0.1, seed=seed)
    cold_model, res["training"]["cold_model"] = fit(cold_ds, raw, seed, runs / f"cold_seed{seed}")
    cs = evaluate_cold_start(cold_model, cold_ds, cold, ks=(20,), seed=seed)
    res["cold_start"] = {"n_rows": cs["n"], "n_cold_items": cs["n_cold_items"],
                         **({"HR@20": cs["model"]["HR@20"], "popularity_HR@20": cs["popularity"]["HR@20"],
                             "random_HR@20": cs["random"]["HR@20"]} if cs["n"] else {})}
    res["seconds"] = time.time() - t0
    print(json.dumps({k: v for k, v in res.items()}, default=float), flush=True)
    return res


def mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samplers": {}}
    for label, _, _ in SAMPLERS:
        keys = per_seed[0]["samplers"][label]
        out["samplers"][label] = {k: mean_std([r["samplers"][label][k] for r in per_seed]) for k in keys}
    out["intent"] = {k: mean_std([r["intent"][k] for r in per_seed]) for k in per_seed[0]["intent"]}
    cs = [r["cold_start"] for r in per_seed if "HR@20" in r["cold_start"]]
    if cs:
        out["cold_start"] = {k: mean_std([c[k] for c in cs]) for k in ("HR@20", "popularity_HR@20", "random_HR@20")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="prepared ML-1M (loo) dataset directory with movies.dat metadata")
    ap.add_argument("--config", type=Path, default=ROOT.parent / "configs" / "idreamrec" / "ml-1m.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="ml-1m")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "idreamrec_ml1m")
    ap.add_argument("--runs", type=Path, default=ROOT.parent / "runs" / "idreamrec_ml1m")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--merge", action="store_true", help="aggregate the per-seed files already written; train nothing")
    ap.add_argument("--quick", action="store_true", help="small synthetic data, hashing encoder, 1 seed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    topic = None
    if args.quick:
        from dreamrec.data.synthetic import SyntheticConfig, generate

        data = generate(SyntheticConfig(n_users=300, n_items=80, n_topics=4, seed=3))
        dataset, topic = data.dataset, data.item_topic
        raw: dict[str, Any] = {"model": "idreamrec", "params": QUICK_PARAMS, "train": QUICK_TRAIN}
        seeds, name = args.seeds[:1], "quick"
        args.runs = ROOT.parent / "runs" / "quick" / "idreamrec"
        args.out = args.runs
    else:
        if args.data is None:
            ap.error("--data is required (or --quick)")
        dataset = PreparedDataset.load(args.data)
        raw, seeds, name = load_yaml(args.config), args.seeds, args.name
    raw = apply_overrides(raw, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for s in seeds:
        seed_file = args.out / f"{name}.seed{s}.json"
        if args.merge:
            if not seed_file.exists():
                raise SystemExit(f"--merge: {seed_file} is missing (run that seed first)")
            per_seed.append(json.loads(seed_file.read_text()))
            continue
        res = run_seed(dataset, raw, s, args.runs, args.quick, topic)
        res.update({"config": raw, "machine": machine(), "command": command_line(),
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
        seed_file.write_text(json.dumps(res, indent=2, default=float))
        per_seed.append(res)
    if args.merge:
        raw = per_seed[0]["config"]
    record = {"dataset": name, "protocol": dataset.protocol, "config": raw, "seeds": seeds, "per_seed": per_seed,
              **aggregate(per_seed),
              "machine": "; ".join(sorted({str(r.get("machine", machine())) for r in per_seed})),
              "command": command_line() if not args.merge else "; ".join(
                  sorted({str(r.get("command", "?")) for r in per_seed})) + f" (merged by {command_line()})",
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
