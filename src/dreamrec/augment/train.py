"""Fitting DiffuASR's generator (:class:`~dreamrec.augment.diffuasr.DiffuASRGenerator`) on the training pairs
of :mod:`dreamrec.augment.data`: Adam over shuffled ``(S_aug, S_raw)`` batches, seeded, training split only."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from dreamrec.augment.data import training_pairs
from dreamrec.augment.diffuasr import DiffuASRConfig, DiffuASRGenerator
from dreamrec.data.dataset import PreparedDataset
from dreamrec.errors import DataError


def train_diffuasr(dataset: PreparedDataset, config: DiffuASRConfig | None = None, *,
                   log: Callable[[str], None] | None = print) -> DiffuASRGenerator:
    """Fit DiffuASR on ``dataset.train`` only (validation and test are never read); seeded, and
    leaves torch's global generator as it found it."""
    cfg = config or DiffuASRConfig()
    aug, raw = training_pairs(dataset.train, cfg)
    if len(aug) == 0:
        raise DataError(f"DiffuASR: no training sequence has more than M={cfg.M} items to learn from; lower M")
    device = torch.device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        gen = DiffuASRGenerator(dataset.n_items, cfg).to(device)
        gen.n_train_pairs = len(aug)
        opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        aug_t, raw_t = torch.from_numpy(aug).to(device), torch.from_numpy(raw).to(device)
        every = max(1, cfg.epochs // 10)
        gen.train()
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(rng.permutation(len(aug))).to(device)
            sums: dict[str, float] = {}
            n_batches = 0
            for s in range(0, len(order), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                loss, parts = gen.loss(aug_t[idx], raw_t[idx].long())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
                opt.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
            means = {k: v / n_batches for k, v in sums.items()}
            gen.loss_history.append(means["mse"])
            if log is not None and ((epoch + 1) % every == 0 or epoch == 0):
                log(f"diffuasr epoch {epoch + 1}/{cfg.epochs}: " + " ".join(f"{k} {v:.4f}" for k, v in means.items()))
    gen.eval()
    return gen
