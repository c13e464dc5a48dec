"""Ranks, metrics, the evaluation loop and exact retrieval, against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dreamrec.data.dataset import SampleRows
from dreamrec.eval.evaluate import evaluate, exclude_history, rank_targets
from dreamrec.eval.metrics import metrics_from_ranks, target_ranks
from dreamrec.retrieval.exact import ExactIndex, topk_from_scores

# ---- target_ranks ---------------------------------------------------------------------------


def test_target_ranks_ties_broken_by_lower_id() -> None:
    # columns are internal items 1..4; items 2 and 3 tie at 0.5
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2]] * 4)
    target = torch.tensor([1, 2, 3, 4])
    # item 1: three higher -> 3; item 2: none higher, no lower-id tie -> 0;
    # item 3: none higher, item 2 ties with a lower id -> 1; item 4: items 2, 3 higher -> 2
    assert target_ranks(scores, target).tolist() == [3, 0, 1, 2]


def test_target_ranks_all_tied_and_infinite() -> None:
    scores = torch.zeros(3, 5)
    assert target_ranks(scores, torch.tensor([1, 3, 5])).tolist() == [0, 2, 4]
    scores = torch.tensor([[float("-inf"), 1.0, float("-inf"), 0.0]])
    # items 2 and 4 score higher, item 1 ties at -inf with a lower id: 2 + 1
    assert target_ranks(scores, torch.tensor([3])).tolist() == [3]


def _brute_force_rank(row: np.ndarray, t: int) -> int:
    """The definition, one row at a time: NaN counts as -inf, a NaN target ranks last."""
    if np.isnan(row[t]):
        return len(row)
    r = np.where(np.isnan(row), -np.inf, row)
    return int((r > r[t]).sum() + (r[:t] == r[t]).sum())


@pytest.mark.parametrize("special", ["none", "ties", "nan", "inf", "both_inf"])
def test_target_ranks_match_the_definition(special: str) -> None:
    # every path of target_ranks (no tie, ties in some rows, NaN anywhere, +-inf) against a brute force
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # coarse values: many ties
    if special == "none":
        scores = rng.normal(size=(40, 30)).astype(np.float32)
    if special == "nan":
        scores[rng.random(scores.shape) < 0.1] = np.nan
    if special in ("inf", "both_inf"):
        scores[rng.random(scores.shape) < 0.1] = np.inf
    if special == "both_inf":
        scores[rng.random(scores.shape) < 0.1] = -np.inf
    target = rng.integers(1, 31, size=40)
    got = target_ranks(torch.from_numpy(scores), torch.from_numpy(target)).tolist()
    assert got == [_brute_force_rank(scores[i], target[i] - 1) for i in range(40)]


def test_target_ranks_padding_never_ranked() -> None:
    scores = torch.tensor([[0.3, 0.2, 0.1]])
    with pytest.raises(ValueError):
        target_ranks(scores, torch.tensor([0]))  # 0 is padding
    with pytest.raises(ValueError):
        target_ranks(scores, torch.tensor([4]))  # beyond n_items
    with pytest.raises(ValueError):
        target_ranks(scores[0], torch.tensor([1]))
    # the worst possible rank is n_items - 1: there is no padding column to rank against
    assert target_ranks(scores, torch.tensor([3])).tolist() == [2]


# ---- metrics_from_ranks ---------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    ranks = np.array([0, 1, 3, 9, 20])
    m = metrics_from_ranks(ranks, ks=(1, 2, 5, 10, 50))
    assert m["n"] == 5
    # HR@K = share of ranks < K
    assert m["HR@1"] == pytest.approx(1 / 5)
    assert m["HR@2"] == pytest.approx(2 / 5)
    assert m["HR@5"] == pytest.approx(3 / 5)
    assert m["HR@10"] == pytest.approx(4 / 5)
    assert m["HR@50"] == pytest.approx(1.0)
    # NDCG@K = mean of 1/log2(rank + 2) over hits
    assert m["NDCG@1"] == pytest.approx(1 / 5)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 5)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
    # MRR@K = mean of 1/(rank + 1) over hits
    assert m["MRR@2"] == pytest.approx((1 + 1 / 2) / 5)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 5)  # 0.35
    assert m["MRR@10"] == pytest.approx(0.37)
    assert m["MRR@50"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 10 + 1 / 21) / 5)


def test_metrics_accept_tensors_and_empty() -> None:
    assert metrics_from_ranks(torch.tensor([0, 2]), ks=(1,)) == {"HR@1": 0.5, "NDCG@1": 0.5, "MRR@1": 0.5, "n": 2}
    empty = metrics_from_ranks(np.zeros(0, dtype=np.int64), ks=(5,))
    assert empty == {"HR@5": 0.0, "NDCG@5": 0.0, "MRR@5": 0.0, "n": 0}


# ---- evaluate -------------------------------------------------------------------------------


class FixedModel(nn.Module):
    """Scores item ``j`` (internal) by ``base[j - 1]`` for every row; records how it is called."""

    def __init__(self, base: list[float], max_len: int = 3):
        super().__init__()
        self.max_len = max_len
        self.base = torch.tensor(base)
        self.lin = nn.Linear(1, 1)  # a parameter, so the module looks like a real model
        self.calls: list[tuple[int, int, bool]] = []

    def score(self, history: torch.Tensor) -> torch.Tensor:
        self.calls.append((history.shape[0], history.shape[1], self.training))
        return self.base.expand(history.shape[0], -1).clone()


# items 1..5 scored 5, 4, 3, 2, 1 -> the rank of item j is j - 1
BASE = [5.0, 4.0, 3.0, 2.0, 1.0]


def make_rows() -> SampleRows:
    history = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1],
            [0, 0, 0, 1, 2],
            [0, 0, 3, 4, 5],
            [1, 2, 3, 4, 5],
            [0, 0, 0, 2, 1],
            [0, 0, 0, 0, 4],
        ]
    )
    target = np.array([1, 2, 3, 4, 5, 5, 3])  # ranks 0, 1, 2, 3, 4, 4, 2
    return SampleRows(history, target)


def test_evaluate_counts_every_row_and_restores_mode() -> None:
    model = FixedModel(BASE)
    model.train()
    rows = make_rows()
    m = evaluate(model, rows, ks=(1, 3), batch_size=3)
    assert [c[0] for c in model.calls] == [3, 3, 1]  # last partial batch scored too
    assert all(c[1] == 3 for c in model.calls)  # histories cut to the model's max_len
    assert not any(c[2] for c in model.calls)  # eval mode while scoring
    assert model.training  # train mode restored
    ranks = [0, 1, 2, 3, 4, 4, 2]
    assert m["n"] == 7
    assert m["HR@1"] == pytest.approx(1 / 7)
    assert m["HR@3"] == pytest.approx(4 / 7)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3) + 2 / math.log2(4)) / 7)
    assert m["MRR@3"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 7)
    np.testing.assert_array_equal(rank_targets(model, rows, batch_size=2), ranks)

    model.eval()
    evaluate(model, rows, batch_size=100)
    assert not model.training  # eval mode stays eval
    model.calls.clear()
    evaluate(model, rows, batch_size=100, max_len=5)
    assert model.calls == [(7, 5, False)]


def test_evaluate_restores_mode_on_error() -> None:
    class Broken(FixedModel):
        def score(self, history: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Broken(BASE)
    model.train()
    with pytest.raises(RuntimeError):
        evaluate(model, make_rows())
    assert model.training


def test_exclude_seen() -> None:
    model = FixedModel(BASE, max_len=5)
    rows = make_rows()
    ranks = rank_targets(model, rows, exclude_seen=True)
    # row 0: empty history -> 0; row 1: item 1 masked, target 2 -> 0; row 2: items 1, 2 masked,
    # target 3 -> 0; row 3: target 4 is itself in the history (-inf); it ties with items 3, 5
    # at -inf and only item 3 has a lower id: 1, 2 higher + 1 tie -> 3; row 4: everything
    # masked, all tie, target 5 -> 4; row 5: items 1, 2 masked, target 5 -> 2 (3, 4 higher);
    # row 6: item 4 masked, target 3 -> 2; padding (0) never masks the last item.
    assert ranks.tolist() == [0, 0, 0, 3, 4, 2, 2]
    h = torch.tensor([[0, 0, 5]])
    out = exclude_history(torch.ones(1, 5), h)
    assert out.tolist() == [[1, 1, 1, 1, float("-inf")]]
    out = exclude_history(torch.ones(1, 5), torch.zeros(1, 3, dtype=torch.long))
    assert torch.all(out == 1)


def test_evaluate_is_seeded_and_keeps_global_rng() -> None:
    class Noisy(FixedModel):
        def score(self, history: torch.Tensor) -> torch.Tensor:
            return torch.randn(history.shape[0], len(self.base))

    model = Noisy(BASE)
    rows = make_rows()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = rank_targets(model, rows, seed=7)
    assert torch.rand(1).item() == expected_next.item()  # global RNG state untouched
    b = rank_targets(model, rows, seed=7)
    np.testing.assert_array_equal(a, b)


# ---- exact retrieval ------------------------------------------------------------------------


def brute_topk(queries: torch.Tensor, items: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by score descending, ties by lower column, via a lexicographic sort."""
    s = (queries @ items.T).numpy()
    cols = np.arange(s.shape[1])
    order = np.stack([np.lexsort((cols, -row)) for row in s])[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10, 36, 37, 1000])
@pytest.mark.parametrize("k", [1, 4, 11, 37, 50])
def test_exact_index_matches_brute_force(chunk: int, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(-2, 3, (6, 4), generator=g).float()
    # duplicated rows spread over the catalog give exact ties across chunk boundaries
    items = base[torch.randint(0, 6, (37,), generator=g)]
    queries = torch.randint(-2, 3, (5, 4), generator=g).float()
    queries[0] = 0  # a query tying every item
    s, cols = ExactIndex(items, chunk_size=chunk).search(queries, k)
    want_s, want_cols = brute_topk(queries, items, min(k, 37))
    np.testing.assert_array_equal(cols.numpy(), want_cols)
    np.testing.assert_array_equal(s.numpy(), want_s)
    assert cols[0].tolist() == list(range(min(k, 37)))


def test_topk_from_scores_ties() -> None:
    s, c = topk_from_scores(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 4)
    assert c.tolist() == [[1, 2, 4, 3]] and s.tolist() == [[3.0, 3.0, 3.0, 2.0]]
    # agrees with target_ranks: the rank of each item is its position in the full top-k list
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 1.0]])
    _, order = topk_from_scores(scores, 6)
    ranks = target_ranks(scores.expand(6, -1), order[0] + 1)
    assert ranks.tolist() == list(range(6))


def test_nan_scores_never_count_as_hits() -> None:
    """A diverged model (NaN scores) must not get HR = 1: a NaN target is a miss (rank n)."""
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [float("nan")] * 3, [0.5, float("nan"), 0.1]])
    ranks = target_ranks(scores, torch.tensor([1, 2, 3]))
    # row 3: item 2's NaN counts as -inf, so only item 1 (0.5) is above the target (0.1)
    assert ranks.tolist() == [3, 3, 1]
    assert metrics_from_ranks(ranks[:2], ks=(1, 3))["HR@3"] == 0.0


def test_exclude_seen_uses_the_whole_stored_history() -> None:
    """Items older than the model's window are excluded too (the model only reads the last 2)."""

    class Fixed(nn.Module):
        max_len = 2

        def score(self, history: torch.Tensor) -> torch.Tensor:
            assert history.shape[1] == 2
            return torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]]).expand(history.shape[0], -1)

    rows = SampleRows(np.array([[1, 2, 3]]), np.array([4]))
    assert rank_targets(Fixed(), rows).tolist() == [3]  # items 1, 2, 3 score higher
    assert rank_targets(Fixed(), rows, exclude_seen=True).tolist() == [0]  # all three excluded


def test_rank_targets_with_intents_and_topk() -> None:
    """``intents`` reach ``model.query`` batch by batch; ``topk`` returns the first items by hand."""

    class IntentModel(FixedModel):
        def __init__(self) -> None:
            super().__init__(BASE)
            self.seen: list[list[str | None]] = []

        def item_embeddings(self) -> torch.Tensor:
            return torch.cat([torch.zeros(1, 5), torch.eye(5)])  # item j = unit vector j - 1

        def query(self, history: torch.Tensor, intents: list[str | None]) -> torch.Tensor:
            self.seen.append(list(intents))
            q = self.base.expand(history.shape[0], -1).clone()
            for i, text in enumerate(intents):
                if text == "last":  # reverse the order for this row: item 5 first
                    q[i] = q[i].flip(0)
            return q

    model = IntentModel()
    rows = make_rows()
    intents = [None, None, "last", None, "last", None, None]
    ranks, top = rank_targets(model, rows, batch_size=4, intents=intents, topk=2)
    assert model.seen == [intents[:4], intents[4:]]
    # reversed rows: target 3 -> rank 2, target 5 -> rank 0; the others as before
    assert ranks.tolist() == [0, 1, 2, 3, 0, 4, 2]
    assert top.tolist() == [[1, 2], [1, 2], [5, 4], [1, 2], [5, 4], [1, 2], [1, 2]]
    with pytest.raises(ValueError, match="3 intents for 7 rows"):
        rank_targets(model, rows, intents=[None] * 3)
