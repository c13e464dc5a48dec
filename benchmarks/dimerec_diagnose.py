"""Where a trained DimeRec's ranking comes from: the generated query, the GEM's interests, or the item norms.

    python benchmarks/dimerec_diagnose.py RUN_DIR [RUN_DIR ...] --data runs/bench/data/zhihu [--split val]
    python benchmarks/dimerec_diagnose.py --gem-only 5 --data runs/bench/data/zhihu [--set params.n_negatives=null ...]

For each finished DimeRec run (``dreamrec train`` / ``dreamrec bench`` output) and the prepared dataset it was
trained on, HR@20 and NDCG@20 over every row of the split (full ranking, no exclusion, as the tables) of:

* ``query``: the model's own ranking ``x_0 . e`` (its configured sampler, keyed noise seeded as the evaluator);
* ``gem-max``: ``max_k g^u_k . e``, the GEM's K interests used directly (ComiRec's retrieval rule);
* ``norm``: ``|e|``, the item norms alone (the same ranking for every row);
* ``popularity``: training-target counts;
* ``co-occurrence``: ``sum_{x in history} C[x, i]`` (+ 1e-6 x popularity), ``C[x, i]`` the number of training rows
  whose history holds ``x`` and whose target is ``i``: a count model of the same history, no learning;

plus the mean cosine between the generated query and the GEM interest closest to it, and the overlap of the
query's top 20 with the norm ranking's top 20. Prints a table and writes ``--json`` when given.

``--gem-only EPOCHS`` instead trains a fresh DimeRec from ``--config`` (default ``configs/dimerec/zhihu.yaml``, with
``--set`` overrides) by the GEM's loss alone (``lambda_recon = mu_ssm = 0``) and prints, after each epoch, ``gem-max``
HR@20 on the validation rows and on the training rows beside popularity's: whether the guidance fits and whether
it generalises, without the diffusion.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.metrics import target_ranks
from dreamrec.keyed_noise import keyed_rows, row_keys
from dreamrec.train.run import load_run


def metrics(scores: torch.Tensor, target: torch.Tensor, k: int = 20) -> tuple[float, float]:
    """Summed HR@k and NDCG@k of a batch (the evaluator's ranks: ties broken by item id)."""
    rank = target_ranks(scores, target)
    hit = rank < k
    return float(hit.sum()), float((hit.float() / torch.log2(rank.float() + 2)).sum())


def cooccurrence(ds: PreparedDataset, n_items: int) -> torch.Tensor:
    """``C`` [n_items + 1, n_items]: row ``x`` counts the training targets of the rows whose history holds ``x``
    (each history item once per row); row 0 (padding) is zeros."""
    h, y = ds.train.history, ds.train.target
    C = np.zeros((n_items + 1, n_items), dtype=np.float32)
    for col in range(h.shape[1]):
        first = np.array([h[r, col] not in h[r, :col] for r in range(len(y))])  # count a repeated item once
        np.add.at(C, (h[first, col], y[first] - 1), 1.0)
    C[0] = 0.0
    return torch.from_numpy(C)


def gem_only(data: Path, config: Path, overrides: list[str], epochs: int) -> None:
    from dreamrec.config import apply_overrides, build_run_config, load_yaml
    from dreamrec.train.run import resolve
    from dreamrec.train.trainer import batches, make_optimizer, seed_everything, train_step

    ds = PreparedDataset.load(data)
    raw = apply_overrides(load_yaml(config), ["params.lambda_recon=0", "params.mu_ssm=0", *overrides])
    cfg, model = resolve(build_run_config(raw, str(config)), ds)
    seed_everything(cfg.train.seed)
    opt = make_optimizer(model, cfg.train)
    rng = np.random.default_rng(cfg.train.seed)
    C = cooccurrence(ds, model.n_items)  # the count model does not change between epochs
    for epoch in range(1, epochs + 1):
        model.train()
        losses = [train_step(model, b, opt, cfg.train, torch.device("cpu"))
                  for b in batches(model, ds, cfg.train.batch_size, cfg.train.max_len, rng)[0]]
        val, train = diagnose_model(model, ds, "val", C=C), diagnose_model(model, ds, "train", C=C)
        print(f"epoch {epoch}: loss {np.mean(losses):.3f}  gem-max HR@20 val {val['gem-max HR@20']:.2f} "
              f"(popularity {val['popularity HR@20']:.2f}), train {train['gem-max HR@20']:.2f} "
              f"(popularity {train['popularity HR@20']:.2f})", flush=True)


def diagnose(run_dir: Path, ds: PreparedDataset, split: str, batch: int = 1024) -> dict[str, float]:
    return diagnose_model(load_run(run_dir).model, ds, split, batch)


def diagnose_model(model: torch.nn.Module, ds: PreparedDataset, split: str, batch: int = 1024,
                   C: torch.Tensor | None = None) -> dict[str, float]:
    """The rankings above for a DimeRec ``model`` (put in eval mode) on ``split`` of ``ds``; ``C``: the
    :func:`cooccurrence` counts of ``ds`` when already built."""
    model.eval()
    rows = getattr(ds, split)
    E = model.item_embeddings()[1:].detach()
    counts = torch.from_numpy(np.bincount(ds.train.target, minlength=model.n_items + 1)[1:]).float()
    sums = {name: [0.0, 0.0] for name in ("query", "gem-max", "norm", "popularity", "co-occurrence")}
    cos_sum, overlap_sum = 0.0, 0.0
    norms = E.norm(dim=1)
    norm_top = norms.topk(20).indices
    C = cooccurrence(ds, model.n_items) if C is None else C
    with torch.no_grad():
        for s in range(0, len(rows.target), batch):
            h = torch.from_numpy(rows.history[s : s + batch])[:, -model.max_len :]
            y = torch.from_numpy(rows.target[s : s + batch])
            with keyed_rows(row_keys(0, h)):
                q = model.query(h)
            g = model.interests(h)  # [B, K, d]
            ranked = {"query": q @ E.T, "gem-max": (g @ E.T).amax(1),
                      "norm": norms.expand(len(y), -1), "popularity": counts.expand(len(y), -1),
                      "co-occurrence": C[h].sum(1) + 1e-6 * counts}
            for name, sc in ranked.items():
                hr, ndcg = metrics(sc, y)
                sums[name][0] += hr
                sums[name][1] += ndcg
            cos_sum += float(F.cosine_similarity(q[:, None], g, dim=-1).amax(1).sum())
            top = ranked["query"].topk(20).indices
            overlap_sum += float(torch.isin(top, norm_top).float().mean(1).sum())
    n = len(rows.target)
    out = {f"{name} {m}": 100 * v[i] / n for name, v in sums.items() for i, m in enumerate(("HR@20", "NDCG@20"))}
    out["cos(query, closest interest)"] = cos_sum / n
    out["query top-20 shared with the norm top-20"] = overlap_sum / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--gem-only", type=int, default=None, metavar="EPOCHS", help="train the GEM alone and report")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/dimerec/zhihu.yaml")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config key=value overrides (--gem-only)")
    ap.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs trained on")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.gem_only:
        gem_only(args.data, args.config, args.overrides, args.gem_only)
        return
    if not args.runs:
        ap.error("give run folders, or --gem-only EPOCHS")
    ds = PreparedDataset.load(args.data)
    results = {}
    for run in args.runs:
        results[str(run)] = r = diagnose(run, ds, args.split)
        print(run, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "command": " ".join(sys.argv), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
