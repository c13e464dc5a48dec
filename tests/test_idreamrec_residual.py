"""idreamrec-residual: iDreamRec's text table plus a learned residual per item (not the paper's method)."""
import dataclasses

import numpy as np
import pytest
import torch

from dreamrec.config import TrainConfig
from dreamrec.data.batching import Batch
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.eval.coldstart import cold_start_split
from dreamrec.eval.evaluate import evaluate
from dreamrec.models.idreamrec import IDreamRec, IDreamRecConfig
from dreamrec.models.idreamrec_variants import IDreamRecResidual, IDreamRecResidualConfig
from dreamrec.train.trainer import train

FAST = dict(text_encoder="hashing:32", hidden=32, n_layers=1, n_heads=2, timesteps=100, beta_end=0.2,
            intent_source="topic", guidance_w=1.0, intent_rho=1.0, sampler="onestep")
TRAIN = dict(epochs=15, batch_size=128, lr=3e-3, optimizer="adamw", val_metric="HR@20", patience=100,
             eval_every=100, seed=0, max_len=10)


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(n_users=400, n_items=80, n_topics=4, seed=3)).dataset


def _model(cls, cfg_cls, ds, tmp, **over):
    model = cls(ds.n_items, 10, cfg_cls(**{**FAST, "text_cache_dir": str(tmp / "cache"), **over}))
    model.fit_statistics(ds)
    return model


def test_starts_as_idreamrec(data, tmp_path):
    """At initialisation (r = 0) the variant has iDreamRec's table, loss and scores."""
    torch.manual_seed(0)
    base = _model(IDreamRec, IDreamRecConfig, data, tmp_path)
    torch.manual_seed(0)
    resid = _model(IDreamRecResidual, IDreamRecResidualConfig, data, tmp_path)
    resid.load_state_dict({**base.state_dict(), "item_residual.weight": resid.item_residual.weight}, strict=True)
    assert torch.equal(resid.item_embeddings(), base.item_embeddings())
    batch = Batch(torch.from_numpy(data.val.history[:64, -10:].copy()), torch.from_numpy(data.val.target[:64].copy()))
    losses = []
    for m in (base, resid):
        torch.manual_seed(1)
        losses.append(m.loss(batch))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    base.eval(), resid.eval()
    torch.manual_seed(2)
    a = base.score(batch.history)
    torch.manual_seed(2)
    torch.testing.assert_close(resid.score(batch.history), a, rtol=0, atol=0)


@pytest.mark.parametrize("target,target_gets_grad", [("stopgrad", False), ("joint", True)])
def test_residual_gradient_paths(data, tmp_path, target, target_gets_grad):
    """Empty histories: the residual learns only through the x0 target, which ``stopgrad`` cuts."""
    model = _model(IDreamRecResidual, IDreamRecResidualConfig, data, tmp_path, residual_target=target)
    model.train()
    batch = Batch(torch.zeros(8, 10, dtype=torch.long), torch.arange(1, 9))
    model.loss(batch).backward()
    grad = model.item_residual.weight.grad
    assert (grad[1:9].abs().sum() > 0) == target_gets_grad
    assert grad[9:].abs().sum() == 0


def test_cold_items_keep_their_text(data, tmp_path):
    """Items never trained on keep r = 0 after training (ranked by their text alone); trained ones move."""
    ds, cold = cold_start_split(data, frac=0.1, seed=0)
    torch.manual_seed(0)
    model = _model(IDreamRecResidual, IDreamRecResidualConfig, ds, tmp_path)
    train(model, ds, TrainConfig(**{**TRAIN, "epochs": 2}), tmp_path / "run", progress=False)
    r = model.item_residual.weight.detach()
    assert r[torch.from_numpy(cold)].abs().sum() == 0
    warm = np.setdiff1d(np.arange(1, ds.n_items + 1), cold)
    assert (r[torch.from_numpy(warm)].abs().sum(1) > 0).all()
    torch.testing.assert_close(model.item_embeddings()[torch.from_numpy(cold)],
                               model.text_table()[torch.from_numpy(cold)], rtol=0, atol=0)


def test_residual_lets_collaborative_signal_in(data, tmp_path):
    """With the item texts shuffled across items (the text says nothing about an item's topic), the fixed
    text table cannot find the planted next-topic pattern; the learned residual does better."""
    meta = data.item_meta.copy()
    meta["text"] = meta["text"].values[np.random.default_rng(0).permutation(len(meta))]
    shuffled = dataclasses.replace(data, item_meta=meta)
    hr = {}
    for cls, cfg_cls in ((IDreamRec, IDreamRecConfig), (IDreamRecResidual, IDreamRecResidualConfig)):
        torch.manual_seed(0)
        model = cls(data.n_items, 10, cfg_cls(**FAST, text_cache_dir=str(tmp_path / "cache")))
        train(model, shuffled, TrainConfig(**TRAIN), tmp_path / cls.name, progress=False)
        hr[cls.name] = evaluate(model, shuffled.test, ks=(20,))["HR@20"]
    assert hr["idreamrec-residual"] > hr["idreamrec"] + 0.05, hr
