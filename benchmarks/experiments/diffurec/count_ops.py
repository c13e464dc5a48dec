"""Operator calls per DiffuRec training step (forward + backward + Adam) on Beauty, trimmed against full width.

    PYTHONPATH=src python benchmarks/experiments/diffurec/count_ops.py   # needs runs/bench/data/beauty (benchmarks/baselines.py)
"""
import numpy as np
import torch
from torch.profiler import profile, ProfilerActivity
from dreamrec.data.dataset import Sequences
from dreamrec.data.batching import iter_pairs
from dreamrec.models import build_model
torch.set_num_threads(1)
d = "runs/bench/data/beauty"
tr = Sequences(items=np.load(f"{d}/train_items.npy"), offsets=np.load(f"{d}/train_offsets.npy"))
n_items = int(tr.items.max())
for trim in (True, False):
    torch.manual_seed(0)
    m = build_model("diffurec", n_items, 50, {"trim_padding": trim})  # explicit: "auto" trims on the CPU
    opt = torch.optim.Adam(m.parameters(), 1e-3, foreach=True)
    it = iter_pairs(tr, 512, 50, np.random.default_rng(0))
    b = next(it)
    loss = m.loss(b); opt.zero_grad(); loss.backward(); opt.step()
    b = next(it)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = m.loss(b); opt.zero_grad(); loss.backward(); opt.step()
    ev = prof.key_averages()
    n_mm = sum(e.count for e in ev if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    n_all = sum(e.count for e in ev if e.key.startswith("aten::") and e.cpu_time_total >= 0)
    print(f"trim={trim}: aten calls {n_all}, matmul calls {n_mm}", flush=True)
