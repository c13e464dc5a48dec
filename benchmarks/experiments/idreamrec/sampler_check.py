"""One-step against multi-step sampling for iDreamRec on the synthetic generator (benchmarks/experiments/idreamrec/NOTES.md).

    PYTHONPATH=src python benchmarks/experiments/idreamrec/sampler_check.py 100 0.2     # T, beta_end
"""
import sys

import torch

from dreamrec.config import TrainConfig
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.models.idreamrec import IDreamRec, IDreamRecConfig, evaluate_with_intents
from dreamrec.train.trainer import train
torch.set_num_threads(1)
data = generate(SyntheticConfig(n_users=400, n_items=80, n_topics=4, seed=3))
FAST = dict(text_encoder="hashing:32", hidden=32, n_layers=1, n_heads=2, timesteps=int(sys.argv[1]), beta_end=float(sys.argv[2]),
            intent_source="topic", guidance_w=1.0, intent_rho=1.0, sampler="onestep", text_cache_dir="runs/explore/cache")
TRAIN = dict(epochs=15, batch_size=128, lr=3e-3, optimizer="adamw", val_metric="HR@20", patience=100, eval_every=100, seed=0, max_len=10)
torch.manual_seed(0)
m = IDreamRec(data.dataset.n_items, 10, IDreamRecConfig(**FAST))
train(m, data.dataset, TrainConfig(**TRAIN), "runs/explore/idr_run", progress=False)
m.eval()
for w in (0.0, 1.0):
    for s, k in (("onestep", None), ("ddim", 5), ("ddim", 20), ("ddpm", None)):
        m.set_sampler(s, k, guidance_w=w)
        r = evaluate_with_intents(m, data.dataset.test, None, ks=(20,), seed=0)
        print(f"w={w} {s}{k or ''}: HR@20 {r['HR@20']:.3f}", flush=True)

# mean against sample: average K independent DDIM-5 draws of x0 per test history (w = 0) and rank by the mean
h = torch.from_numpy(data.dataset.test.history[:, -10:])
target = torch.from_numpy(data.dataset.test.target)
E = m.item_embeddings()[1:]
m.set_sampler("ddim", 5, guidance_w=0.0)
with torch.no_grad():
    draws = []
    for k in range(16):
        torch.manual_seed(100 + k)
        draws.append(m.generate(h))
    for K in (1, 4, 16):
        scores = torch.stack(draws[:K]).mean(0) @ E.T
        rank = (scores > scores.gather(1, target[:, None] - 1)).sum(1)
        print(f"w=0 ddim5, mean of {K} draws: HR@20 {(rank < 20).float().mean():.3f}", flush=True)
