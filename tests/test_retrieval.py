"""Retrieval behind one interface: exact (chunked) and FAISS agree with brute force."""
import numpy as np
import pytest
import torch

from dreamrec.retrieval import ExactIndex, ItemIndex, build_index, topk_from_scores


def clustered(n: int, d: int, centres: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    x = c[torch.randint(0, centres, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return x * torch.empty(n, 1).uniform_(0.5, 1.5, generator=g)


def test_exact_chunked_equals_brute_force():
    items, q = clustered(1000, 16, 20, 0), torch.randn(7, 16)
    s_ref, i_ref = topk_from_scores(q @ items.T, 25)
    for chunk in (1000, 333, 64, 1):
        s, i = ExactIndex(items, chunk_size=chunk).search(q, 25)
        assert torch.equal(i, i_ref) and torch.allclose(s, s_ref)
    s, i = ExactIndex(items).search(q, 5000)  # k above the catalog: the whole catalog
    assert s.shape == (7, 1000)


def test_exact_ties_by_lower_id_across_chunks():
    items = torch.ones(10, 2)
    _, i = ExactIndex(items, chunk_size=3).search(torch.ones(1, 2), 4)
    assert i.tolist() == [[0, 1, 2, 3]]


def test_build_index_and_interface():
    items = clustered(200, 8, 5, 1)
    idx = build_index(items)
    assert isinstance(idx, ExactIndex) and isinstance(idx, ItemIndex) and len(idx) == 200
    assert idx.nbytes() == 200 * 8 * 4
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(items, "annoy")


def test_faiss_recall_on_clustered_items():
    pytest.importorskip("faiss")
    from dreamrec.retrieval.faiss_index import FaissIndex

    items = clustered(20_000, 32, 100, 2)
    g = torch.Generator().manual_seed(3)
    queries = items[torch.randint(0, 20_000, (50,), generator=g)] + 0.3 * torch.randn(50, 32, generator=g)
    _, exact = ExactIndex(items).search(queries, 20)
    idx = build_index(items, "faiss", nprobe=16)
    assert isinstance(idx, FaissIndex) and isinstance(idx, ItemIndex) and len(idx) == 20_000
    s, i = idx.search(queries, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(i.tolist(), exact.tolist())])
    assert recall >= 0.95
    assert torch.all(s[:, :-1] >= s[:, 1:])  # best first
    idx.set_search_params(nprobe=idx.index.nlist)  # scanning every cell is exact
    _, i_all = idx.search(queries, 20)
    assert all(set(a) == set(b) for a, b in zip(i_all.tolist(), exact.tolist()))
    assert idx.nbytes() >= 20_000 * 32 * 4
    hnsw = build_index(items[:2000], "faiss", spec="HNSW16", ef_search=64)
    assert hnsw.search(queries[:2], 5)[1].shape == (2, 5)


def test_recommender_with_faiss_matches_exact(tmp_path, small_synthetic):
    pytest.importorskip("faiss")
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.serve import Recommender
    from dreamrec.train.run import train_run

    ds = small_synthetic.dataset
    cfg = RunConfig(model="sasrec", params={"hidden": 16, "n_layers": 1}, train=TrainConfig(epochs=1, seed=1))
    train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "run", progress=False, log=None, dataset=ds)
    exact = Recommender.load(tmp_path / "run")
    approx = Recommender.load(tmp_path / "run", index="faiss", index_options={"nprobe": 10_000})
    hist = ds.to_original(ds.test.history[0][ds.test.history[0] > 0])
    a, b = exact.recommend(hist, k=10, exclude_seen=True), approx.recommend(hist, k=10, exclude_seen=True)
    assert a.items == b.items and np.allclose(a.scores, b.scores, atol=1e-5)


def test_exact_memory_bound_shrinks_chunks_for_big_batches():
    items, q = clustered(500, 8, 5, 4), torch.randn(40, 8)
    s_ref, i_ref = topk_from_scores(q @ items.T, 10)
    s, i = ExactIndex(items, max_scores=40 * 37).search(q, 10)  # 37 items per block
    assert torch.equal(i, i_ref) and torch.allclose(s, s_ref)
