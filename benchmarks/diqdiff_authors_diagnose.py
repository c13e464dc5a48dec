"""What a ``diqdiff-authors`` run learned: its loss terms, its logit scale and how it ranks rows it trained on.

    python benchmarks/diqdiff_authors_diagnose.py RUN [RUN ...] --data DATA_DIR --name NAME

For each run directory, two sets of weights: the selected ones (``model.safetensors``) and the last epoch's
(``checkpoint/``). For each, on ``--n`` training rows drawn at random (seeded) and on the validation split:

* the two training loss terms, separately, as ``DiQDiffAuthors.loss`` computes them (cross-entropy of
  ``x0_hat E^T`` and the contrastive ``L_c``), in eval mode (no dropout), batches of the config's size (``L_c``
  depends on it), one noise draw per row; ``log(n_items + 1)`` (the uniform guess) gives the CE's scale;
* the scale of the logits: mean norm of ``x0_hat`` and of the item rows, and the mean standard deviation of a row's
  logits ``x0_hat E^T``;
* HR@20 and NDCG@20 of the model's own ranking (its reverse process as configured), full ranking.

Writes ``benchmarks/results/survey_checks/diqdiff_authors-<name>.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402
from train_vs_val import runs_and_rows_args, training_rows  # noqa: E402

from dreamrec.data.batching import Batch  # noqa: E402
from dreamrec.data.dataset import PreparedDataset, SampleRows  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.models.diqdiff_authors import discrepancy_loss  # noqa: E402
from dreamrec.train.checkpoint import has_checkpoint, load_checkpoint  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402


@torch.no_grad()
def loss_terms(model, rows: SampleRows, batch: int, max_len: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    E = model.item_embedding.weight
    sums = {"ce": 0.0, "l_c": 0.0, "x0_hat_norm": 0.0, "logit_std": 0.0}
    n = 0
    for s in range(0, len(rows.target), batch):
        h = torch.as_tensor(rows.history[s:s + batch, -max_len:], dtype=torch.long)
        tgt = torch.as_tensor(rows.target[s:s + batch], dtype=torch.long)
        x0_hat = model.reconstruct(Batch(h, tgt))  # the training path, one noise draw per row
        logits = x0_hat @ E.T
        k = len(tgt)
        sums["ce"] += float(F.cross_entropy(logits, tgt)) * k
        sums["l_c"] += float(discrepancy_loss(x0_hat, model.config.contrast_temperature)) * k
        sums["x0_hat_norm"] += float(x0_hat.norm(dim=1).mean()) * k
        sums["logit_std"] += float(logits.std(dim=1).mean()) * k
        n += k
    out = {key: v / n for key, v in sums.items()}
    out["item_norm"] = float(E[1:].norm(dim=1).mean())
    return out


def diagnose(run_dir: Path, ds: PreparedDataset, n: int, seed: int) -> dict:
    run = load_run(run_dir)
    if run.config.model != "diqdiff-authors":
        raise SystemExit(f"{run_dir}: a {run.config.model} run, not diqdiff-authors")
    cfg = run.config.train
    model = run.model.eval()
    rows = {"train": training_rows(ds, n, seed), "val": ds.val}
    out: dict = {"run": str(run_dir), "uniform_ce": math.log(ds.n_items + 1)}
    weights = {"selected": None}
    if has_checkpoint(run_dir / "checkpoint"):
        weights["last"] = run_dir / "checkpoint"
    for label, ckpt in weights.items():
        if ckpt is not None:
            epoch = load_checkpoint(ckpt, model, restore_torch_rng=False)["epoch"]
        else:
            epoch = json.loads((run_dir / "metrics.json").read_text()).get("best_epoch")
        model.eval()
        res: dict = {"epoch": epoch}
        for split, r in rows.items():
            terms = loss_terms(model, r, cfg.batch_size, cfg.max_len, seed)
            torch.manual_seed(seed)
            m = evaluate(model, r, max_len=cfg.max_len, exclude_seen=cfg.exclude_seen)
            res[split] = {**terms, "HR@20": m["HR@20"], "NDCG@20": m["NDCG@20"], "n": m["n"]}
        out[label] = res
        print(f"{run_dir} {label} (epoch {epoch}): " + "; ".join(
            f"{s} CE {v['ce']:.2f} L_c {v['l_c']:.3f} |x0_hat| {v['x0_hat_norm']:.1f} |E| {v['item_norm']:.1f} "
            f"logit std {v['logit_std']:.1f} HR@20 {100 * v['HR@20']:.2f}" for s, v in res.items() if s != "epoch"),
            flush=True)
    return out


def main() -> None:
    args, ds = runs_and_rows_args(__doc__.splitlines()[0], 8192)
    record = {"name": args.name, "data": str(args.data), "n_train_rows": args.n, "command": command_line(),
              "machine": machine(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "runs": [diagnose(r, ds, args.n, args.seed) for r in args.runs]}
    out = RESULTS / "survey_checks" / f"diqdiff_authors-{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
