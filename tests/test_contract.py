"""Every registered model honours the one model contract (``dreamrec.models.base``).

For each name in the registry, at its small demo settings: one training step gives a finite loss and
moves the weights; ``score`` maps ``[B, L]`` histories to ``[B, n_items]`` finite scores, also for an
all-padding (empty) history; the weights saved by the trainer reload into a fresh model that scores
bit-identically; and for models that rank by a query (``ranks_by_query``), ``score`` equals
``query @ item_embeddings()[1:].T``. A model added to the registry is covered without editing this file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dreamrec.config import TrainConfig
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.demo import DEMO_PARAMS
from dreamrec.eval.evaluate import seeded_rng
from dreamrec.models import MODELS, build_model
from dreamrec.train.checkpoint import load_weights
from dreamrec.train.trainer import batches, make_optimizer, train, train_step


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticConfig(n_users=80, n_items=40, n_topics=4, seed=5)).dataset


def _scores(model: torch.nn.Module, history: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), seeded_rng(11):
        return model.score(history)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_contract(name: str, tiny, tmp_path: Path) -> None:
    ds = tiny
    params = DEMO_PARAMS.get(name, {})
    torch.manual_seed(0)
    model = build_model(name, ds.n_items, ds.max_len, params)
    model.fit_statistics(ds)
    history = torch.from_numpy(ds.test.history[:6, -ds.max_len:].copy())

    if model.batch_mode != "none":  # one optimiser step: a finite loss that moves the weights
        config = TrainConfig(batch_size=32, lr=1e-2, grad_clip=None)
        batch = next(iter(batches(model, ds, 32, ds.max_len, np.random.default_rng(0))[0]))
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        loss = train_step(model, batch, make_optimizer(model, config), config, torch.device("cpu"))
        assert np.isfinite(loss)
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    scores = _scores(model, history)
    assert scores.shape == (6, ds.n_items) and torch.isfinite(scores).all()
    empty = _scores(model, torch.zeros(2, ds.max_len, dtype=torch.long))
    assert empty.shape == (2, ds.n_items) and torch.isfinite(empty).all()

    # the trainer's saved weights reload bit-identically into a freshly built model
    train(model, ds, TrainConfig(epochs=1, batch_size=64, seed=1, health_checks=False), tmp_path,
          progress=False, log=None)
    fresh = build_model(name, ds.n_items, ds.max_len, params)
    load_weights(fresh, tmp_path / "model.safetensors")
    assert torch.equal(_scores(model, history), _scores(fresh, history))

    if model.ranks_by_query():
        with torch.no_grad(), seeded_rng(11):
            query = model.query(history)
        table = model.item_embeddings()[1:].detach()
        assert torch.allclose(_scores(model, history), query @ table.T, atol=1e-5, rtol=1e-5)
