"""New-item scoring (dreamrec.models.new_items): which items are new, the standardised scores and the offset
by hand, the batched sweep equal to the wrapper under the evaluation, DreamRec's guidance-only scores, the CLI
option, the benchmark script's choice on validation, and bad input named."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.data.dataset import SampleRows
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.eval.coldstart import cold_start_split
from dreamrec.eval.evaluate import rank_targets
from dreamrec.models import build_model
from dreamrec.eval.new_items import ranks_by_offset
from dreamrec.models.new_items import NewItemScoring, new_item_mask, standardise
from dreamrec.train.run import train_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# the residual recipe (as reshead-ce, with small settings): its new-item score is the guidance c
DREAMREC = {"hidden": 16, "n_heads": 1, "timesteps": 4, "sampler": "ddim", "sampler_steps": 2, "denoiser": "mlp2",
            "denoiser_residual": True, "correction_scale": 2.0, "ce_weight": 1.0, "x0_weight": 0.0}
SASREC = {"hidden": 16, "n_layers": 1, "n_heads": 1, "loss": "ce"}


@pytest.fixture(scope="module")
def with_new_items():
    """A synthetic split whose training and validation data lack 10 % of the catalog; test keeps them."""
    ds, cold = cold_start_split(generate(SyntheticConfig(n_users=200, n_items=60, n_topics=3, seed=5)).dataset, 0.1, 0)
    return ds, cold


class Fixed(nn.Module):
    """A stand-in model with given scores (and new-item scores)."""

    def __init__(self, s, s_new=None):
        super().__init__()
        self.n_items, self.max_len = s.shape[1], 3
        self.s, self.s_new = s, s_new
        self.w = nn.Parameter(torch.zeros(1))

    def score(self, history):
        return self.s[: len(history)]

    def new_item_scores(self, history):
        return None if self.s_new is None else self.s_new[: len(history)]

    def ranks_by_query(self):
        return True


def test_mask_counts_histories_and_targets():
    import pandas as pd

    from dreamrec.data.dataset import PreparedDataset

    train = SampleRows(np.array([[0, 2], [2, 3]]), np.array([3, 4]))
    empty = SampleRows(np.zeros((1, 2), dtype=np.int64), np.array([5]))
    ds = PreparedDataset(item_ids=pd.Series(range(6)), train=train, val=empty, test=empty, max_len=2, protocol="t")
    # item 2 only in histories, 3 in both, 4 only as a target; 1, 5 and 6 nowhere
    assert ds.train_items_seen().tolist() == [False, False, True, True, True, False, False]
    assert new_item_mask(ds).tolist() == [False, True, False, False, False, True, True]


def test_standardised_scores_and_offset_by_hand():
    s = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3, sample std sqrt(14/3)
    sd = (14 / 3) ** 0.5
    assert torch.allclose(standardise(s), torch.tensor([[-2 / sd, -1 / sd, 0.0, 3 / sd]]))
    assert torch.equal(standardise(torch.ones(2, 3)), torch.zeros(2, 3))  # a constant row stays finite
    new = np.array([False, False, True, False, True])  # internal items 2 and 4 are new
    m = Fixed(s, s_new=torch.tensor([[0.0, 0.0, 5.0, 1.0]]))  # s' mean 1.5, std sqrt(17/3)
    sd2 = (17 / 3) ** 0.5
    out = NewItemScoring(m, new, 0.5).score(torch.zeros(1, 3, dtype=torch.long))
    expect = torch.tensor([[-2 / sd, -1.5 / sd2 + 0.5, 0.0, -0.5 / sd2 + 0.5]])
    assert torch.allclose(out, expect)
    # own_scores ignores s': the model's own standardised scores of new items, shifted
    out = NewItemScoring(m, new, 0.5, own_scores=True).score(torch.zeros(1, 3, dtype=torch.long))
    assert torch.allclose(out, torch.tensor([[-2 / sd, -1 / sd + 0.5, 0.0, 3 / sd + 0.5]]))
    # no new-item scores: the model's own standardised scores, shifted
    out = NewItemScoring(Fixed(s), new, -1.0).score(torch.zeros(1, 3, dtype=torch.long))
    assert torch.allclose(out, torch.tensor([[-2 / sd, -1 / sd - 1, 0.0, 3 / sd - 1]]))
    off = NewItemScoring(Fixed(s), new, None)
    assert torch.equal(off.score(torch.zeros(1, 3, dtype=torch.long)), s) and not off.ranks_by_query()
    assert NewItemScoring(Fixed(s), new, float("-inf")).beta is None
    inner = Fixed(s).eval()  # the wrapper keeps the wrapped model's mode, so evaluation leaves it in eval mode
    wrapped = NewItemScoring(inner, new, 0.5)
    assert not wrapped.training and not inner.training
    assert not NewItemScoring(Fixed(s), new, 0.0).ranks_by_query()


def test_bad_input_is_named():
    m = Fixed(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="length n_items \\+ 1 = 5"):
        NewItemScoring(m, np.zeros(4, dtype=bool), 0.0)
    with pytest.raises(ValueError, match="padding"):
        NewItemScoring(m, np.array([True, False, False, False, False]), 0.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            NewItemScoring(m, np.zeros(5, dtype=bool), bad)


@pytest.mark.parametrize("name,params", [("dreamrec-ablation", DREAMREC), ("sasrec", SASREC)])
def test_sweep_equals_the_wrapper_under_evaluation(tmp_path, with_new_items, name, params):
    ds, cold = with_new_items
    new = new_item_mask(ds)
    assert set(np.flatnonzero(new)) == set(cold.tolist())  # the held-out items are exactly the new ones
    cfg = RunConfig(model=name, params=params, train=TrainConfig(epochs=2, seed=1, batch_size=64))
    run = train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "run", progress=False, log=None, dataset=ds)
    del run
    from dreamrec.train.run import load_run

    model = load_run(tmp_path / "run").model.eval()
    betas = [None, -1.0, 0.0, 2.0]
    sweep = ranks_by_offset(model, ds.test, new, betas, seed=3, batch_size=50)
    shifted = ranks_by_offset(model, ds.test, new, betas, seed=3, batch_size=50, own_scores=True)
    for b in betas:
        own = rank_targets(NewItemScoring(model, new, b), ds.test, seed=3, batch_size=50)
        assert np.array_equal(sweep[b], own), b
        own = rank_targets(NewItemScoring(model, new, b, own_scores=True), ds.test, seed=3, batch_size=50)
        assert np.array_equal(shifted[b], own), b
    assert not model.training  # evaluating through the wrapper leaves the model in eval mode
    if name == "dreamrec-ablation":  # its new-item scores differ from its own: the two policies rank differently
        assert not np.array_equal(sweep[2.0], shifted[2.0])
    assert np.array_equal(sweep[None], rank_targets(model, ds.test, seed=3, batch_size=50))
    new_rows = new[ds.test.target]
    assert new_rows.any()
    # a large offset puts every new item first, so new targets rank within the new items
    big = ranks_by_offset(model, ds.test, new, [1e6], seed=3, batch_size=50)[1e6]
    assert (big[new_rows] < new.sum()).all() and (big[~new_rows] >= new.sum()).all()


def test_dreamrec_new_item_scores_are_the_guidance(small_synthetic):
    ds = small_synthetic.dataset
    model = build_model("dreamrec-ablation", ds.n_items, ds.max_len, DREAMREC).eval()
    h = torch.from_numpy(ds.test.history[:7])
    expect = model.guidance(h) @ model.item_embeddings()[1:].T
    assert torch.allclose(model.new_item_scores(h), expect)
    plain = build_model("dreamrec", ds.n_items, ds.max_len, {"hidden": 16, "n_heads": 1, "timesteps": 4})
    assert plain.new_item_scores(h) is None  # without the residual correction c is not an item-space query
    assert build_model("sasrec", ds.n_items, ds.max_len, SASREC).new_item_scores(h) is None


def test_cli_and_benchmark_choose_on_validation(tmp_path, with_new_items):
    from new_item_offset import main
    from typer.testing import CliRunner

    from dreamrec.cli import app

    ds, _ = with_new_items
    data = ds.save(tmp_path / "data")
    runs = []
    for seed in (0, 1):
        out = tmp_path / "sasrec" / f"seed{seed}"
        cfg = RunConfig(model="sasrec", params=SASREC, train=TrainConfig(epochs=2, seed=seed, batch_size=64))
        train_run(cfg, data, out, progress=False, log=None, dataset=ds)
        runs.append(out)
    res = CliRunner().invoke(app, ["evaluate", str(runs[0]), "--json", "--new-item-offset", "0.5"])
    assert res.exit_code == 0, res.output
    from dreamrec.train.run import load_run

    model = load_run(runs[0]).model
    r = rank_targets(NewItemScoring(model, new_item_mask(ds), 0.5), ds.test, seed=0,
                     batch_size=load_run(runs[0]).config.train.eval_batch_size)
    assert json.loads(res.output)["HR@20"] == pytest.approx(float((r < 20).mean()))
    out = tmp_path / "o"
    main(["--data", str(data), "--group", "a", str(tmp_path / "sasrec" / "seed*"), "--group", "b", str(runs[1]),
          "--own-group", "c", str(runs[1]), "--betas", "-1", "0", "1", "--name", "t", "--out", str(out)])
    result = json.loads((out / "t.json").read_text())
    assert (out / "t.png").stat().st_size > 0 and (out / "t.md").exists()
    g = result["groups"]["a"]
    assert list(g["summary"]) == ["off", "-1", "0", "1"]
    best = max(g["summary"], key=lambda b: g["summary"][b]["val"]["HR@20"]["mean"])
    assert g["chosen"] == best  # validation, never test, chooses
    assert g["at_grid_edge"] == (best in ("-1", "1"))
    # SASRec has no new-item scores, so shifting its own scores is the same policy
    assert result["groups"]["c"]["own_scores"] and result["groups"]["c"]["summary"] == result["groups"]["b"]["summary"]
    assert "c (own scores shifted)" in (out / "t.md").read_text()
    own = json.loads((runs[0] / "metrics.json").read_text())
    assert g["runs"][0]["points"]["off"]["test"]["HR@20"] == pytest.approx(own["test"]["HR@20"])
    assert result["new_target_share"]["val"] == 0.0 and result["new_target_share"]["test"] > 0
    assert result["comparisons"][0]["welch_p"]["HR@20"] is None  # group b has one run
    for args, msg in ((["--group", "a", str(runs[0]), "--group", "a", str(runs[1])], "differ"),
                      (["--group", "a"], "at least one run"),
                      (["--group", "a", str(tmp_path / "nope")], "not a run directory")):
        with pytest.raises(SystemExit):
            main(["--data", str(data), *args, "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_recommender_and_app_apply_the_policy(tmp_path, with_new_items, monkeypatch):
    from typer.testing import CliRunner

    from dreamrec.cli import app
    from dreamrec.serve import Recommender

    ds, cold = with_new_items
    data = ds.save(tmp_path / "data")
    run = tmp_path / "run"
    cfg = RunConfig(model="sasrec", params=SASREC, train=TrainConfig(epochs=2, seed=0, batch_size=64))
    train_run(cfg, data, run, progress=False, log=None, dataset=ds)
    ids = ds.item_ids.tolist()
    history = [ids[i - 1] for i in ds.test.history[0] if i > 0]
    plain = Recommender.load(run).recommend(history, k=len(ids))
    rec = Recommender.load(run, new_item_offset=100.0)  # new items first, in their own order
    assert rec.retrieval is None
    top = rec.recommend(history, k=len(cold)).items
    assert sorted(top) == sorted(ids[i - 1] for i in cold)
    assert top == [x for x in plain.items if x in set(top)]  # a shift keeps the new items' own order
    named = Recommender.load(run, new_item_offset=100.0, new_items=[ids[0], ids[1]])
    assert sorted(named.recommend(history, k=2).items) == sorted([ids[0], ids[1]])
    with pytest.raises(ValueError, match="not in the catalog"):
        Recommender.load(run, new_item_offset=0.0, new_items=["no-such-item"])
    with pytest.raises(ValueError, match="only used with new_item_offset"):
        Recommender.load(run, new_items=[ids[0]])
    off = Recommender.load(run, new_item_offset=float("-inf"))  # the policy off: the model itself, retrieval kept
    assert off.retrieval is not None and off.recommend(history, k=len(ids)).items == plain.items
    assert not off.model.training
    r = CliRunner().invoke(app, ["recommend", str(run), "--history", ",".join(map(str, history)), "--k", str(len(cold)),
                                 "--new-item-offset", "100"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["items"] == top
    pytest.importorskip("fastapi")
    from dreamrec.serve.app import app_from_env

    monkeypatch.setenv("DREAMREC_RUN_DIR", str(run))  # what `dreamrec serve --new-item-offset 100` hands its workers
    monkeypatch.setenv("DREAMREC_NEW_ITEM_OFFSET", "100.0")
    assert app_from_env().state.recommender.model.beta == 100.0
