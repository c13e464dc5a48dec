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


def _trained(tmp_path, ds, model="sasrec", params=None):
    cfg = RunConfig(model=model, params=params if params is not None else {"hidden": 16, "n_layers": 1},
                    train=TrainConfig(epochs=1, seed=1))
    train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "run", progress=False, log=None, dataset=ds)
    return tmp_path / "run"


def test_artifact_loads_without_unpickling_and_leaves_no_temp_files(tmp_path, small_synthetic, monkeypatch):
    import pickle

    import pandas as pd

    run = _trained(tmp_path, small_synthetic.dataset)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "items.parquet", "model.safetensors", "metrics.json", "log.jsonl"} <= names
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a run must not unpickle anything")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pd, "read_pickle")):
        monkeypatch.setattr(target, name, forbidden)
    a, b = Recommender.load(run), Recommender.load(run)
    ds = small_synthetic.dataset
    histories = [ds.to_original(h[h > 0]) for h in ds.test.history[:20]]
    ra, rb = a.recommend_batch(histories, k=15), b.recommend_batch(histories, k=15)
    assert [r.items for r in ra] == [r.items for r in rb]
    assert [r.scores for r in ra] == [r.scores for r in rb]  # bit-identical floats


def test_batch_single_strict_intent_and_k(tmp_path, small_synthetic):
    import pytest

    from dreamrec.serve import IntentNotSupportedError, UnknownItemsError

    ds = small_synthetic.dataset
    rec = Recommender.load(_trained(tmp_path, ds))
    histories = [ds.to_original(h[h > 0]) for h in ds.test.history[:5]] + [[]]
    batch = rec.recommend_batch(histories, k=8)
    for h, r in zip(histories, batch):
        one = rec.recommend(h, k=8)
        assert one.items == r.items and np.allclose(one.scores, r.scores, atol=1e-6)
    assert rec.recommend([str(x) for x in histories[0]], k=8).items == batch[0].items  # "42" matches 42
    assert len(rec.recommend([], k=10**6).items) == rec.n_items
    long = rec.recommend(histories[0] * 50, k=3)
    assert long.truncated and long.items == rec.recommend((histories[0] * 50)[-rec.max_len:], k=3).items
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend([], k=0)
    with pytest.raises(UnknownItemsError) as e:
        rec.recommend(["x", histories[0][0]], strict=True)
    assert e.value.unknown == ["x"]
    with pytest.raises(IntentNotSupportedError, match="sasrec"):
        rec.recommend([], intent="something for the beach")
    assert rec.recommend([], intent="").items == rec.recommend([]).items
    assert rec.recommend_batch([]) == []


def test_concurrent_calls_match_serial(tmp_path, small_synthetic):
    from concurrent.futures import ThreadPoolExecutor

    ds = small_synthetic.dataset
    run = _trained(tmp_path, ds)
    rec = Recommender.load(run)
    histories = [ds.to_original(h[h > 0]) for h in ds.test.history[:40]]
    serial = [rec.recommend(h, k=10) for h in histories]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda h: rec.recommend(h, k=10, exclude_seen=False), histories * 3))
    assert [r.items for r in parallel] == [r.items for r in serial] * 3
    # concurrent calls may share one model call (dreamrec.serve.coalesce): the same answer up to float rounding
    np.testing.assert_allclose([r.scores for r in parallel], [r.scores for r in serial] * 3, rtol=1e-5, atol=1e-6)
    exact = Recommender.load(run, coalesce=False)
    with ThreadPoolExecutor(8) as pool:
        unmerged = list(pool.map(lambda h: exact.recommend(h, k=10), histories))
    assert [r.scores for r in unmerged] == [r.scores for r in serial]  # one call at a time: bit for bit


def test_item_metadata(tmp_path, small_synthetic):
    ds = small_synthetic.dataset
    rec = Recommender.load(_trained(tmp_path, ds, "popularity", {}))
    first = rec._ids[0]
    assert rec.item(first)["item_id"] == first and rec.item(str(first))["item_id"] == first
    assert rec.item("no-such-item") is None


def test_ids_that_do_not_fit_never_match():
    """Booleans, floats and non-ASCII digit strings are not item ids, whatever the catalog type."""
    from dreamrec.data.dataset import coerce_id

    index = {1: 1, 42: 2, "7": 3}
    assert coerce_id(42, index) == 42 and coerce_id("42", index) == 42 and coerce_id(" 42 ", index) == 42
    assert coerce_id(7, index) == "7" and coerce_id(np.int64(42), index) == 42
    for bad in (True, 1.0, np.float64(42.0), "4_2", "+42", "٤٢", None):
        assert coerce_id(bad, index) is None, bad


def test_exclude_seen_covers_history_beyond_the_window(tmp_path, small_synthetic):
    """exclude_seen removes every item of the history, also those older than the model's window."""
    ds = small_synthetic.dataset
    data_dir = ds.save(tmp_path / "data")
    cfg = RunConfig(model="popularity", train=TrainConfig(max_len=2))
    train_run(cfg, data_dir, tmp_path / "run", progress=False, log=None, dataset=ds)
    rec = Recommender.load(tmp_path / "run")
    popular = rec.recommend([], k=5).items
    history = popular[:3] + ds.to_original(np.array([ds.n_items, ds.n_items - 1]))  # popular items are old
    r = rec.recommend(history, k=ds.n_items, exclude_seen=True)
    assert not set(r.items) & set(history) and len(r.items) == ds.n_items - len(set(history))


def test_mixture_dreamrec_serves_its_mixture_scores(tmp_path, small_synthetic):
    """dreamrec-ablation with ``draws > 1`` ranks by its K-draw mixture, not by one query: the Recommender
    scores it exactly (no retrieval index), and the reloaded artifact gives identical scores."""
    from dreamrec.keyed_noise import keyed_rows, row_keys

    ds = small_synthetic.dataset
    params = {"hidden": 16, "timesteps": 20, "ce_weight": 1.0, "x0_weight": 0.0, "draws": 3,
              "train_timesteps": "last", "sampler": "onestep"}
    run = _trained(tmp_path, ds, model="dreamrec-ablation", params=params)
    a, b = load_run(run).model, load_run(run).model
    assert not a.ranks_by_query()
    h = torch.from_numpy(ds.test.history[:1, -a.max_len:])
    keys = row_keys(1, h)  # the Recommender keys each row's noise by (the run's seed, the row)
    with torch.no_grad(), keyed_rows(keys):
        s = a.score(h)
    with torch.no_grad(), keyed_rows(keys):
        assert torch.equal(s, b.score(h))
    rec = Recommender.load(run)
    assert rec.retrieval is None
    r = rec.recommend(ds.to_original(ds.test.history[0][ds.test.history[0] > 0]), k=5)
    assert list(r.items) == list(ds.to_original(s[0].topk(5).indices.numpy() + 1))
    assert np.allclose(r.scores, s[0].topk(5).values.numpy(), atol=1e-6)


def test_empty_history_gets_a_learned_answer_or_the_popularity_ranking(tmp_path, small_synthetic):
    """SASRec under leave-one-out never trains its empty-history query: the popularity ranking answers
    (and says so); under the DreamRec protocol the first rows of every user train it: the model answers."""
    from dreamrec.data.synthetic import SyntheticConfig, generate

    ds = small_synthetic.dataset
    rec = Recommender.load(_trained(tmp_path / "loo", ds))
    counts = ds.train_item_counts()[1:]
    for history in ([], ["no-such-item", "neither"]):
        r = rec.recommend(history, k=10)
        assert r.fallback == "popularity" and r.to_dict()["fallback"] == "popularity"
        order = np.argsort(-counts, kind="stable")[:10]
        assert r.items == list(ds.to_original(order + 1))
        assert r.scores == [float(c) for c in counts[order]] and len(set(r.scores)) > 1
    assert r.unknown == ["no-such-item", "neither"]
    # a batch mixing both kinds answers each row as if alone
    known = list(ds.to_original(ds.test.history[0][ds.test.history[0] > 0]))
    batch = rec.recommend_batch([known, [], known], k=10)
    assert batch[1].items == rec.recommend([], k=10).items and batch[0].fallback is None
    assert batch[0].items == batch[2].items == rec.recommend(known, k=10).items

    paired = generate(SyntheticConfig(n_users=200, n_items=60, n_topics=4, seed=3, protocol="dreamrec")).dataset
    rec = Recommender.load(_trained(tmp_path / "pairs", paired))
    r = rec.recommend([], k=10)
    assert r.fallback is None and len(r.items) == 10
