"""The synthetic HMM generator: determinism, the split contract, and the exactness of the bound."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, pad_left
from dreamrec.data.synthetic import (
    ITEM_ID_OFFSET,
    SyntheticConfig,
    SyntheticData,
    bayes_optimal,
    bayes_scores,
    expected_metrics,
    forward_predictive,
    generate,
    topic_words,
)
from dreamrec.eval.metrics import metrics_from_ranks, target_ranks


@pytest.fixture(scope="module")
def loo() -> SyntheticData:
    return generate(SyntheticConfig())


@pytest.fixture(scope="module")
def dream() -> SyntheticData:
    return generate(SyntheticConfig(protocol="dreamrec"))


def user_sequences(data: SyntheticData) -> dict[int, list[int]]:
    """Each internal user's internal-id sequence, rebuilt from the raw interactions by time."""
    index = data.dataset.item_index()
    user_index = {u: i for i, u in enumerate(data.dataset.user_ids.tolist())}
    df = data.interactions.sort_values(["user", "timestamp"], kind="stable")
    return {user_index[u]: [index[i] for i in g["item"]] for u, g in df.groupby("user", sort=False)}


def assert_rows_valid(rows: SampleRows, n_items: int, window: int) -> None:
    assert rows.width == window
    assert rows.history.min() >= 0 and rows.history.max() <= n_items
    assert rows.target.min() >= 1 and rows.target.max() <= n_items
    # right-aligned: once a row has started, no padding follows
    started = np.cumsum(rows.history != 0, axis=1) > 0
    assert not np.any(started & (rows.history == 0))


# ---- determinism and validation --------------------------------------------------------------


def test_same_seed_same_data() -> None:
    a, b = generate(SyntheticConfig(seed=3)), generate(SyntheticConfig(seed=3))
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.item_text, b.item_text)
    np.testing.assert_array_equal(a.dataset.test.history, b.dataset.test.history)
    np.testing.assert_array_equal(a.transition, b.transition)
    c = generate(SyntheticConfig(seed=4))
    assert not a.interactions["item"].equals(c.interactions["item"])


def test_config_rejects_truncating_window() -> None:
    with pytest.raises(ValidationError):
        SyntheticConfig(max_len=30, window=20)
    with pytest.raises(ValidationError):
        SyntheticConfig(min_len=10, max_len=8)
    with pytest.raises(ValidationError):
        SyntheticConfig(bogus=1)
    SyntheticConfig(max_len=21, window=20)  # the longest history is max_len - 1 = 20


def test_parameters_are_distributions(loo: SyntheticData) -> None:
    cfg = loo.config
    assert loo.pi.shape == (cfg.n_topics,) and np.isclose(loo.pi.sum(), 1)
    assert loo.transition.shape == (cfg.n_topics, cfg.n_topics)
    np.testing.assert_allclose(loo.transition.sum(1), 1)
    np.testing.assert_allclose(np.diag(loo.transition), cfg.stickiness)
    assert loo.emission.shape == (cfg.n_topics, cfg.n_items)
    np.testing.assert_allclose(loo.emission.sum(1), 1)
    # noise = 0: an item is emitted only by its own topic
    support = loo.emission > 0
    assert np.all(support.sum(0) == 1)
    np.testing.assert_array_equal(support.argmax(0), loo.item_topic)
    assert np.bincount(loo.item_topic).min() >= cfg.n_items // cfg.n_topics


# ---- the raw data and the splits ------------------------------------------------------------


def test_interactions_and_texts(loo: SyntheticData) -> None:
    cfg = loo.config
    df = loo.interactions
    assert list(df.columns) == ["user", "item", "timestamp"]
    assert df["user"].nunique() == cfg.n_users
    assert df["item"].min() >= ITEM_ID_OFFSET  # original ids never look like internal ones
    per_user = df.groupby("user")["timestamp"]
    assert (per_user.diff().dropna() > 0).all()  # strictly increasing per user
    sizes = df.groupby("user").size()
    assert sizes.min() >= cfg.min_len and sizes.max() <= cfg.max_len
    assert per_user.min().nunique() > cfg.n_users // 2  # start times are spread out

    text = loo.item_text
    assert len(text) == cfg.n_items and text.index.is_unique
    for item_id, row in text.sample(20, random_state=0).iterrows():
        words = row["text"].split()
        assert words[-1] == str(item_id)
        assert set(words[:-1]) <= set(topic_words(int(row["topic"])))
        assert len(words[:-1]) >= 3
    meta = loo.dataset.item_meta
    assert meta is not None and len(meta) == cfg.n_items
    np.testing.assert_array_equal(meta["text"].to_numpy(), text.loc[loo.dataset.item_ids, "text"].to_numpy())
    np.testing.assert_array_equal(meta["topic"].to_numpy(), loo.item_topic)


def test_loo_structure(loo: SyntheticData) -> None:
    ds, cfg = loo.dataset, loo.config
    assert ds.protocol == "loo" and ds.max_len == cfg.window
    assert ds.n_items == cfg.n_items and ds.n_users == cfg.n_users
    assert ds.info["config"]["seed"] == cfg.seed
    assert isinstance(ds.train, Sequences) and len(ds.train) == cfg.n_users
    for rows in (ds.val, ds.test):
        assert_rows_valid(rows, ds.n_items, cfg.window)
        np.testing.assert_array_equal(rows.user, np.arange(cfg.n_users))
    seqs = user_sequences(loo)
    for u in range(cfg.n_users):
        s = seqs[u]
        np.testing.assert_array_equal(ds.train.get(u), s[:-2])
        np.testing.assert_array_equal(loo.sequences.get(u), s)
        assert ds.val.target[u] == s[-2] and ds.test.target[u] == s[-1]
        # nothing is truncated: the visible history is the whole prefix
        np.testing.assert_array_equal(ds.val.history[u][ds.val.history[u] > 0], s[:-2])
        np.testing.assert_array_equal(ds.test.history[u][ds.test.history[u] > 0], s[:-1])
    assert ds.test.lengths().max() <= cfg.window


def test_dreamrec_structure(dream: SyntheticData) -> None:
    ds, cfg = dream.dataset, dream.config
    assert ds.protocol == "dreamrec" and isinstance(ds.train, SampleRows)
    seqs = user_sequences(dream)
    start = dream.interactions.groupby("user")["timestamp"].min().to_numpy()  # users are in id order
    split_users = {}
    for name in ("train", "val", "test"):
        rows = getattr(ds, name)
        assert_rows_valid(rows, ds.n_items, cfg.window)
        users = np.unique(rows.user)
        split_users[name] = users
        # every prefix of every user is exactly one row, the empty history included
        assert len(rows) == sum(len(seqs[u]) for u in users)
        for u in users[:50]:
            mine = rows.user == u
            s = seqs[u]
            np.testing.assert_array_equal(rows.target[mine], s)
            np.testing.assert_array_equal(rows.lengths()[mine], np.arange(len(s)))
            for t, h in enumerate(rows.history[mine]):
                np.testing.assert_array_equal(h[h > 0], s[:t])
    n = {k: len(v) for k, v in split_users.items()}
    assert n == {"train": 1600, "val": 200, "test": 200}
    assert not set(split_users["train"]) & set(split_users["val"])
    assert not set(split_users["val"]) & set(split_users["test"])
    # split by start time
    assert start[split_users["train"]].max() <= start[split_users["val"]].min()
    assert start[split_users["val"]].max() <= start[split_users["test"]].min()


def test_dataset_round_trip(dream: SyntheticData, tmp_path) -> None:
    back = PreparedDataset.load(dream.dataset.save(tmp_path / "syn"))
    np.testing.assert_array_equal(back.test.history, dream.dataset.test.history)
    assert back.info["config"] == dream.dataset.info["config"]
    assert back.item_meta is not None and back.item_meta["text"].tolist() == dream.item_text["text"].tolist()


# ---- the optimum ----------------------------------------------------------------------------


def brute_force_predictive(history: list[int], pi: np.ndarray, P: np.ndarray, E: np.ndarray) -> np.ndarray:
    """p(next item | history) by summing over every topic path z_1..z_{T+1}."""
    k_n = len(pi)
    t_n = len(history)
    joint = np.zeros(E.shape[1])
    for path in itertools.product(range(k_n), repeat=t_n + 1):
        w = pi[path[0]]
        for t in range(t_n):
            w *= E[path[t], history[t] - 1] * P[path[t], path[t + 1]]
        joint += w * E[path[-1]]
    return joint / joint.sum()


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_forward_matches_brute_force(noise: float) -> None:
    cfg = SyntheticConfig(
        n_users=5, n_items=4, n_topics=2, min_len=3, max_len=3, window=3, stickiness=0.6, noise=noise, zipf=1.0
    )
    data = generate(cfg)
    histories = [list(h) for t in range(4) for h in itertools.product(range(1, 5), repeat=t)]
    rows = SampleRows(pad_left(histories, 3), np.ones(len(histories), dtype=np.int64))
    got = bayes_scores(data, rows)
    want = np.stack([brute_force_predictive(h, data.pi, data.transition, data.emission) for h in histories])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0], data.pi @ data.emission)  # empty history -> pi
    np.testing.assert_allclose(got.sum(1), 1)
    q = forward_predictive(rows.history, data.pi, data.transition, data.emission)
    np.testing.assert_allclose(q.sum(1), 1)


def test_expected_metrics_by_hand() -> None:
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])
    m = expected_metrics(probs, ks=(1, 2, 10))
    assert m["n"] == 2
    assert m["HR@1"] == pytest.approx((0.6 + 0.25) / 2)
    assert m["HR@2"] == pytest.approx((0.9 + 0.5) / 2)
    assert m["HR@10"] == pytest.approx(1.0)
    assert m["NDCG@2"] == pytest.approx((0.6 + 0.3 / math.log2(3) + 0.25 + 0.25 / math.log2(3)) / 2)
    assert m["MRR@10"] == pytest.approx((0.6 + 0.3 / 2 + 0.1 / 3 + 0.25 * (1 + 1 / 2 + 1 / 3 + 1 / 4)) / 2)


def realized_vs_expected(data: SyntheticData, split: str, k: int = 20) -> None:
    rows = data.dataset.split(split)
    probs = bayes_scores(data, rows)
    ranks = target_ranks(torch.from_numpy(probs), torch.from_numpy(rows.target))
    got = metrics_from_ranks(ranks, (k,))
    bound = bayes_optimal(data, split, ks=(k,))
    assert bound["n"] == got["n"] == len(rows)
    # per-row hit is Bernoulli(p_i): standard error of the mean from the exact per-row variances
    top = -np.sort(-probs, axis=1)[:, :k]
    hr = top.sum(1)
    se_hr = math.sqrt((hr * (1 - hr)).sum()) / len(rows)
    disc = 1 / np.log2(np.arange(k) + 2)
    nd_mean, nd_sq = (top * disc).sum(1), (top * disc**2).sum(1)
    se_nd = math.sqrt((nd_sq - nd_mean**2).sum()) / len(rows)
    assert abs(got[f"HR@{k}"] - bound[f"HR@{k}"]) < 4 * se_hr
    assert abs(got[f"NDCG@{k}"] - bound[f"NDCG@{k}"]) < 4 * se_nd


def test_bayes_ranking_realizes_bound_loo(loo: SyntheticData) -> None:
    realized_vs_expected(loo, "test")
    realized_vs_expected(loo, "val")


def test_bayes_ranking_realizes_bound_dreamrec(dream: SyntheticData) -> None:
    realized_vs_expected(dream, "test")


def test_bound_beats_popularity(loo: SyntheticData) -> None:
    rows = loo.dataset.test
    counts = torch.from_numpy(loo.dataset.train_item_counts()[1:].astype(np.float64))
    pop = metrics_from_ranks(target_ranks(counts.expand(len(rows), -1), torch.from_numpy(rows.target)), (20,))
    bound = bayes_optimal(loo, "test", ks=(20,))
    assert 0.3 <= bound["HR@20"] <= 0.6
    assert pop["HR@20"] < bound["HR@20"] - 0.15
    # even knowing the true popularity (the stationary marginal) does not come close
    marg = expected_metrics((loo.pi @ loo.emission)[None, :], ks=(20,))
    assert marg["HR@20"] < bound["HR@20"] - 0.15


def test_bound_is_monotone_in_k(loo: SyntheticData) -> None:
    b = bayes_optimal(loo)
    assert set(b) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20, 50)} | {"n"}
    assert b["HR@5"] < b["HR@10"] < b["HR@20"] < b["HR@50"] <= 1
    for k in (5, 10, 20, 50):
        assert b[f"MRR@{k}"] <= b[f"NDCG@{k}"] <= b[f"HR@{k}"]
