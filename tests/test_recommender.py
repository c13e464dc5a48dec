"""The saved run reloads to identical scores; the Python API speaks original ids."""
import numpy as np
import torch

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.eval.evaluate import rank_targets
from dreamrec.serve import Recommender
from dreamrec.train.run import load_run, train_run


def test_reload_gives_identical_scores(tmp_path, small_synthetic):
    ds = small_synthetic.dataset
    data_dir = ds.save(tmp_path / "data")
    cfg = RunConfig(model="sasrec", params={"hidden": 16, "n_layers": 1}, train=TrainConfig(epochs=2, seed=1))
    train_run(cfg, data_dir, tmp_path / "run", progress=False, log=None, dataset=ds)
    a = load_run(tmp_path / "run").model
    b = load_run(tmp_path / "run").model
    h = torch.from_numpy(ds.test.history[:50, -a.max_len:])
    assert torch.equal(a.score(h), b.score(h))
    assert np.array_equal(rank_targets(a, ds.test), rank_targets(b, ds.test))

    rec = Recommender.load(tmp_path / "run")
    first_user_history = ds.to_original(ds.test.history[0][ds.test.history[0] > 0])
    r = rec.recommend(first_user_history, k=10)
    assert len(r.items) == 10 and r.unknown == []
    # the top item is the argmax of the model's own scores, in original ids
    with torch.no_grad():
        s = a.score(torch.from_numpy(ds.test.history[:1, -a.max_len:]))
    assert r.items[0] == ds.to_original(np.array([int(s.argmax()) + 1]))[0]
    seen = rec.recommend(first_user_history, k=ds.n_items, exclude_seen=True)
    assert not set(seen.items) & set(first_user_history)
    assert len(rec.recommend([], k=5).items) == 5
