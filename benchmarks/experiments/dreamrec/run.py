"""Scratch harness: train DreamRec (or a direct-regression control) on the synthetic data, log per
epoch and print test HR@20 / NDCG@20 vs the Bayes bound plus scoring diagnostics.

usage: run.py PRESET 'PARAMS_JSON' ['TRAIN_JSON'] [--direct]
PRESET: default (SyntheticConfig()) | easy (100 items, zipf 0)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)

from dreamrec.config import TrainConfig  # noqa: E402
from dreamrec.data.synthetic import SyntheticConfig, bayes_optimal, bayes_scores, generate  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.models import build_model  # noqa: E402
from dreamrec.models.dreamrec_variants import DreamRecAblation as DreamRec  # noqa: E402  (every research option)
from dreamrec.train.trainer import seed_everything, train  # noqa: E402

PRESETS = {
    "default": {},
    "easy": {"n_users": 2000, "n_items": 100, "n_topics": 10, "zipf": 0.0, "seed": 0},
}


class Direct(DreamRec):
    """Control: the same encoder regresses the target embedding directly (MSE), query = head(c)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        d = self.config.hidden
        self.head = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def loss(self, batch):
        x0 = self.item_embedding(batch.target)
        if not self.config.target_grad:
            x0 = x0.detach()
        return F.mse_loss(self.head(self.guidance(batch.history)), x0)

    def query(self, history):
        return self.head(self.guidance(history))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    preset = args[0]
    params = json.loads(args[1]) if len(args) > 1 else {}
    tr = {"epochs": 30, "patience": 3, "batch_size": 128, "lr": 2e-3, "seed": 0, "val_metric": "HR@20"}
    if len(args) > 2:
        tr.update(json.loads(args[2]))
    t0 = time.perf_counter()
    data = generate(SyntheticConfig(**PRESETS[preset]))
    ds = data.dataset
    seed_everything(0)
    base = {"hidden": 64, "timesteps": 100, "denoiser": "mlp2", "sampler": "onestep", "guidance_w": 0.0}
    base.update(params)
    if "--direct" in sys.argv:
        from dreamrec.models.dreamrec_variants import DreamRecAblationConfig as DreamRecConfig

        model = Direct(ds.n_items, ds.max_len, DreamRecConfig(**base))
    else:
        model = build_model("dreamrec-ablation", ds.n_items, ds.max_len, base)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, ds, TrainConfig(**tr), tmp, progress=False)
    for e in res.history:
        v = e.get("val", {})
        print(f"ep {e['epoch']:2d} loss {e['loss']:.4f} valHR20 {v.get('HR@20', float('nan')):.4f} "
              f"norm {e.get('item_norm', 0):.3f} cos {e.get('item_cos', 0):.3f} {e['seconds']:.1f}s")
    test = evaluate(model, ds.test, seed=0)
    bound = bayes_optimal(data, "test")
    el = time.perf_counter() - t0
    # diagnostics on the test rows
    model.eval()
    with torch.no_grad():
        h = torch.from_numpy(ds.test.history[:, -ds.max_len:])
        torch.manual_seed(0)
        q = model.query(h)
        E = model.item_embeddings()[1:]
        p = torch.from_numpy(bayes_scores(data, ds.test)).float()
        ideal = p @ E  # E[x0 | history] under the true next-item law
        cos = F.cosine_similarity(q, ideal, dim=1).mean()
        ideal_hr = (((ideal @ E.T).argsort(1, descending=True)[:, :20]) == torch.from_numpy(ds.test.target - 1)[:, None]).any(1).float().mean()
        s = q @ E.T
        top = s.topk(20, dim=1).indices
        norms = E.norm(dim=1)
        print(f"diag: |q| {q.norm(dim=1).mean():.3f} |E[x0|h]| {ideal.norm(dim=1).mean():.3f} |e| {norms.mean():.3f} "
              f"cos(q,E[x0|h]) {cos:.3f} HR@20 of E[x0|h]-query {ideal_hr:.4f} "
              f"mean|e| of top20 {norms[top].mean():.3f} corr(score,|e|) {np.corrcoef(s.mean(0).numpy(), norms.numpy())[0,1]:.3f}")
    print(f"RESULT {preset} {json.dumps(params)} {json.dumps(tr) if len(args) > 2 else ''} {'direct' if '--direct' in sys.argv else ''}: "
          f"HR@20 {test['HR@20']:.4f} NDCG@20 {test['NDCG@20']:.4f} bayes {bound['HR@20']:.4f} "
          f"ratio {test['HR@20'] / bound['HR@20']:.3f} best_ep {res.best_epoch} {el:.1f}s")


if __name__ == "__main__":
    main()
