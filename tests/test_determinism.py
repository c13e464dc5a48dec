"""Issue 31: a generated recommendation is a function of the request alone.

The same history (and intent, k, settings) gets the same items and scores alone or in any batch,
from Python (``recommend``/``recommend_batch``), the CLI (``--history`` and ``--input``, chunked),
HTTP (``/recommend``, ``/recommend/batch``) and ``evaluate`` (ranks equal to the ranks of
independently recommended rows), for every sampled model: the noise is keyed per row
(:mod:`dreamrec.keyed_noise`).
"""
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dreamrec import keyed_noise
from dreamrec.cli import app as cli_app
from dreamrec.config import RunConfig, TrainConfig
from dreamrec.data.dataset import SampleRows
from dreamrec.eval.evaluate import rank_targets
from dreamrec.eval.metrics import metrics_from_ranks
from dreamrec.models import build_model
from dreamrec.serve import Recommender
from dreamrec.serve.app import create_app
from dreamrec.train.run import load_run, train_run

# every model whose inference draws noise, small; stochastic samplers (ddpm) where there is a choice
SAMPLED = {
    "dreamrec": {"hidden": 16, "timesteps": 20, "sampler": "ddpm"},
    "dreamrec-ablation": {"hidden": 16, "timesteps": 20, "draws": 3, "ce_weight": 1.0},  # a K-draw mixture
    "diffurec": {"hidden": 8, "n_blocks": 1, "n_heads": 2, "timesteps": 8, "n_seeds": 2},
    "ddrm": {"hidden": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "timesteps": 4},
    "diffrec": {"dims": [16], "time_dim": 4, "timesteps": 3, "inference_noise_steps": 2},
    "diffrec2": {"hidden": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "timesteps": 10, "n_seeds": 2},
    "dimerec": {"hidden": 4, "n_interests": 2, "timesteps": 10, "gem_width": 6},
    "diqdiff": {"hidden": 4, "timesteps": 10, "n_codes": 3, "sampler": "ddim", "sampler_steps": 2, "ddim_eta": 1.0},
    "idreamrec": {"text_encoder": "hashing:16", "hidden": 16, "n_layers": 1, "n_heads": 2, "timesteps": 10,
                  "intent_source": "topic", "sampler": "ddpm", "sampler_steps": 5},
}
INTENTS = ["jazz", None, "rock ballads", "", "\ud800 late night", None, "jazz"]


def _rows(rows: SampleRows, idx) -> SampleRows:
    return SampleRows(rows.history[idx], rows.target[idx], rows.user[idx])


# -- the noise itself ------------------------------------------------------------------------------

def test_outside_the_context_it_is_torch_randn():
    """Training is unchanged (bit-exact resume): no context, the global generator as before."""
    torch.manual_seed(7)
    a, b = keyed_noise.randn((3, 4)), keyed_noise.randn_like(torch.zeros(2, 5, dtype=torch.float64))
    torch.manual_seed(7)
    assert torch.equal(a, torch.randn(3, 4)) and torch.equal(b, torch.randn(2, 5, dtype=torch.float64))
    assert not keyed_noise.active()


def test_keyed_noise_is_per_row_gaussian_and_ignores_padding_width():
    h = torch.tensor([[0, 0, 3, 4], [0, 1, 2, 3], [5, 6, 7, 8]])
    keys = keyed_noise.row_keys(0, h, ["a", None, "b"])
    assert torch.equal(keys, keyed_noise.row_keys(0, torch.nn.functional.pad(h, (5, 0)), ["a", "", "b"]))
    assert len(set(keys.tolist())) == 3
    assert not torch.equal(keys, keyed_noise.row_keys(1, h, ["a", None, "b"]))  # the seed enters
    assert keys[0] != keyed_noise.row_keys(0, h[:1], ["c"])[0]  # the intent enters
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    with keyed_noise.keyed_rows(keys):
        first, second = keyed_noise.randn((3, 6)), keyed_noise.randn((6, 6))  # second: 2 copies per row
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is not consumed
    with keyed_noise.keyed_rows(keys[[2, 0]]):  # other neighbours, other order: the same rows
        assert torch.equal(keyed_noise.randn((2, 6)), first[[2, 0]])
        assert torch.equal(keyed_noise.randn((4, 6)), second[[2, 0, 5, 3]])
        with pytest.raises(RuntimeError, match="multiple of the number of rows"):
            keyed_noise.randn((3, 6))
    assert not torch.equal(second[:3], second[3:])  # copies of a row get their own noise
    with keyed_noise.keyed_rows(torch.arange(400, dtype=torch.int64)):
        z = keyed_noise.randn((400, 500)).double()
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs(((z.abs() > 1.96).double().mean() - 0.05).item()) < 0.003
    assert abs(torch.corrcoef(z[:, :2].T)[0, 1].item()) < 0.2  # neighbouring elements uncorrelated


# -- every sampled model: evaluate does not depend on the batch -------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_evaluate_ranks_do_not_depend_on_batch_composition(name, small_synthetic):
    ds = small_synthetic.dataset
    torch.manual_seed(0)
    model = build_model(name, ds.n_items, ds.max_len, SAMPLED[name])
    model.fit_statistics(ds)
    rows = _rows(ds.test, np.arange(60))
    intents = [INTENTS[i % len(INTENTS)] for i in range(60)] if name == "idreamrec" else None
    whole = rank_targets(model, rows, batch_size=1024, seed=3, intents=intents)
    assert np.array_equal(rank_targets(model, rows, batch_size=7, seed=3, intents=intents), whole)
    perm = np.random.default_rng(0).permutation(60)
    shuffled = rank_targets(model, _rows(rows, perm), batch_size=16, seed=3,
                            intents=None if intents is None else [intents[i] for i in perm])
    assert np.array_equal(shuffled, whole[perm])


# -- trained runs: every path ------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["diffurec", "idreamrec"])
def served(request, tmp_path_factory, small_synthetic):
    name = request.param
    tmp = tmp_path_factory.mktemp(f"determinism_{name}")
    ds = small_synthetic.dataset
    params = dict(SAMPLED[name])
    if name == "idreamrec":
        params["text_cache_dir"] = str(tmp / "cache")
    cfg = RunConfig(model=name, params=params, train=TrainConfig(epochs=1, seed=1, max_len=10))
    train_run(cfg, ds.save(tmp / "data"), tmp / "run", progress=False, log=None, dataset=ds)
    rec = Recommender.load(tmp / "run")
    rows = _rows(ds.test, np.arange(40))
    histories = [ds.to_original(h[h > 0]) for h in rows.history]
    intents = [INTENTS[i % len(INTENTS)] for i in range(40)] if rec.supports_intent else [None] * 40
    alone = [rec.recommend(h, k=20, intent=t) for h, t in zip(histories, intents)]
    return {"run": tmp / "run", "rec": rec, "ds": ds, "rows": rows, "histories": histories, "intents": intents,
            "alone": alone}


def _same(got, want) -> None:
    assert got["items"] == want.items
    np.testing.assert_allclose(got["scores"], want.scores, rtol=1e-5, atol=1e-6)


def test_python_batches_answer_as_single_requests(served):
    rec, hs, ts, alone = served["rec"], served["histories"], served["intents"], served["alone"]
    order = list(np.random.default_rng(1).permutation(len(hs)))[:25] + [0, 0, 3]  # shuffled, with duplicates
    batch = rec.recommend_batch([hs[i] for i in order], k=20, intents=[ts[i] for i in order])
    for i, r in zip(order, batch):
        _same(r.to_dict(), alone[i])
    assert any(a.items != alone[0].items for a in alone[1:])  # the rows do differ: the check has teeth


def test_http_single_and_batch_answer_alike(served):
    hs, ts, alone = served["histories"], served["intents"], served["alone"]
    with TestClient(create_app(Recommender.load(served["run"]))) as c:
        for i in (0, 5, 9):
            body = json.dumps({"history": hs[i], "k": 20, "intent": ts[i]}, ensure_ascii=True)
            r = c.post("/recommend", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            _same(r.json(), alone[i])
        order = [7, 2, 11, 2, 30, 0]
        histories = [{"history": hs[i], "intent": ts[i]} if ts[i] else hs[i] for i in order]
        body = json.dumps({"histories": histories, "k": 20}, ensure_ascii=True)
        r = c.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        for i, got in zip(order, r.json()["results"]):
            _same(got, alone[i])


def test_cli_history_and_chunked_input_answer_alike(served, tmp_path):
    hs, ts, alone = served["histories"], served["intents"], served["alone"]
    runner = CliRunner()
    args = ["recommend", str(served["run"]), "--history", ",".join(map(str, hs[4])), "--k", "20"]
    res = runner.invoke(cli_app, args + (["--intent", ts[4]] if ts[4] else []))
    assert res.exit_code == 0, res.output
    _same(json.loads(res.output), alone[4])
    # more lines than one 512-row chunk, in an order that puts each history in several chunk positions
    order = list(np.random.default_rng(2).integers(0, len(hs), size=530))
    lines = [json.dumps({"history": hs[i], **({"intent": ts[i]} if ts[i] is not None else {})}, ensure_ascii=True)
             for i in order]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    res = runner.invoke(cli_app, ["recommend", str(served["run"]), "--input", str(tmp_path / "in.jsonl"),
                                  "--output", str(tmp_path / "out.jsonl"), "--k", "20"])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for i, got in zip(order, out):
        _same(got, alone[i])


def test_evaluate_ranks_equal_ranks_of_independent_recommendations(served):
    rec, rows, ds = served["rec"], served["rows"], served["ds"]
    intents = served["intents"] if rec.supports_intent else None
    independent = []
    for h, t, target in zip(served["histories"], served["intents"], rows.target):
        items = rec.recommend(h, k=rec.n_items, intent=t).items  # the full ranking, one row alone
        independent.append(items.index(ds.to_original(np.array([target]))[0]))
    model = load_run(served["run"]).model
    for batch_size in (1024, 9):
        ranks = rank_targets(model, rows, batch_size=batch_size, seed=rec.seed, intents=intents)
        assert ranks.tolist() == independent
    if intents is None:  # the CLI's evaluate on the whole test split, scored independently row by row
        test = ds.test
        res = CliRunner().invoke(cli_app, ["evaluate", str(served["run"]), "--json", "--batch-size", "64"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        ranks = []
        for hist, target in zip(test.history, test.target):
            items = rec.recommend(ds.to_original(hist[hist > 0]), k=rec.n_items).items
            ranks.append(items.index(ds.to_original(np.array([target]))[0]))
        want = metrics_from_ranks(np.asarray(ranks))
        assert {k: got[k] for k in want} == pytest.approx(want)


def test_seeded_rng_seeds_the_cpu_generator_and_restores_it():
    """Inside: the draws of ``torch.manual_seed(seed)``; after: the global stream goes on as if untouched."""
    from dreamrec.eval.evaluate import seeded_rng

    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_rng(3):
        got = torch.rand(4)
    assert torch.equal(got, want)
    assert torch.equal(torch.get_rng_state(), before)
