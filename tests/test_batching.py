"""Training batches: every sample exactly once, right-aligned windows, labels aligned to inputs."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dreamrec.data.batching import (
    fit_width,
    iter_pairs,
    iter_seq2seq,
    n_pairs,
    n_seq2seq,
    seq2seq_windows,
)
from dreamrec.data.dataset import SampleRows, Sequences, pad_left

# item ids are unique across the whole training set, so every item names its (sequence, position)
LENGTHS = [1, 2, 5, 0, 7, 3, 12]


def make_sequences() -> Sequences:
    seqs, nxt = [], 1
    for n in LENGTHS:
        seqs.append(list(range(nxt, nxt + n)))
        nxt += n
    return Sequences.from_lists(seqs)


def where_is(seqs: Sequences) -> dict[int, tuple[int, int]]:
    return {int(x): (u, p) for u in range(len(seqs)) for p, x in enumerate(seqs.get(u))}


def assert_right_aligned(h: np.ndarray) -> None:
    started = np.cumsum(h != 0, axis=1) > 0
    assert not np.any(started & (h == 0)), "padding after an item"


# ---- fit_width ------------------------------------------------------------------------------


def test_fit_width() -> None:
    h = np.array([[0, 1, 2, 3], [0, 0, 0, 4]])
    assert fit_width(h, 4) is h
    np.testing.assert_array_equal(fit_width(h, 2), [[2, 3], [0, 4]])  # most recent kept
    np.testing.assert_array_equal(fit_width(h, 6), [[0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 4]])
    assert fit_width(h, 6).dtype == h.dtype
    assert fit_width(np.zeros((0, 3), dtype=np.int64), 5).shape == (0, 5)


# ---- pairs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [1, 3, 20])
@pytest.mark.parametrize("shuffle", [False, True])
def test_iter_pairs_sequences_every_pair_once(max_len: int, shuffle: bool) -> None:
    seqs = make_sequences()
    batches = list(iter_pairs(seqs, 4, max_len, np.random.default_rng(0), shuffle=shuffle))
    assert all(len(b.target) <= 4 for b in batches)
    got = Counter()
    for b in batches:
        assert b.history.shape[1] == max_len and b.labels is None
        assert_right_aligned(b.history.numpy())
        for h, y in zip(b.history.numpy(), b.target.numpy()):
            got[(tuple(h), int(y))] += 1
    want = Counter()
    for u in range(len(seqs)):
        s = seqs.get(u)
        for t in range(1, len(s)):
            want[(tuple(pad_left([s[:t]], max_len)[0]), int(s[t]))] += 1
    assert got == want
    assert sum(got.values()) == n_pairs(seqs) == sum(max(n - 1, 0) for n in LENGTHS)


def test_iter_pairs_shuffle_is_seeded() -> None:
    seqs = make_sequences()
    a = [b.target.tolist() for b in iter_pairs(seqs, 5, 3, np.random.default_rng(1))]
    b = [b.target.tolist() for b in iter_pairs(seqs, 5, 3, np.random.default_rng(1))]
    c = [b.target.tolist() for b in iter_pairs(seqs, 5, 3, np.random.default_rng(2))]
    assert a == b and a != c


@pytest.mark.parametrize("max_len", [2, 5, 8])
def test_iter_pairs_rows(max_len: int) -> None:
    history = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 1, 2], [3, 4, 5, 6, 7], [0, 0, 8, 9, 10]])
    rows = SampleRows(history, np.array([11, 12, 13, 14]))
    got = {}
    for b in iter_pairs(rows, 3, max_len, np.random.default_rng(0)):
        for h, y in zip(b.history.numpy(), b.target.numpy()):
            assert int(y) not in got
            got[int(y)] = h
    assert sorted(got) == [11, 12, 13, 14]
    for i, y in enumerate([11, 12, 13, 14]):
        np.testing.assert_array_equal(got[y], fit_width(history[i : i + 1], max_len)[0])
    assert n_pairs(rows) == 4


# ---- seq2seq --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [1, 2, 3, 4, 11, 30])
@pytest.mark.parametrize("shuffle", [False, True])
def test_iter_seq2seq_every_transition_once(max_len: int, shuffle: bool) -> None:
    seqs = make_sequences()
    pos = where_is(seqs)
    seen = Counter()
    n_windows = 0
    for b in iter_seq2seq(seqs, 3, max_len, np.random.default_rng(0), shuffle=shuffle):
        x, y = b.history.numpy(), b.labels.numpy()
        assert x.shape == y.shape == (len(b.target), max_len)
        np.testing.assert_array_equal(b.target.numpy(), y[:, -1])
        assert_right_aligned(x)
        assert np.all((x == 0) <= (y == 0)), "a label without an input"
        for xr, yr in zip(x, y):
            n_windows += 1
            live = xr[xr > 0]
            # the inputs are a contiguous run of one sequence
            (u0, p0) = pos[int(live[0])]
            assert [pos[int(v)] for v in live] == [(u0, p0 + i) for i in range(len(live))]
            for j in range(max_len):
                if yr[j] == 0:
                    continue
                (u, p), (uy, py) = pos[int(xr[j])], pos[int(yr[j])]
                assert uy == u and py == p + 1, "label is not the item after its input"
                seen[(u, p + 1)] += 1
    want = Counter({(u, p): 1 for u, n in enumerate(LENGTHS) for p in range(1, n)})
    assert seen == want
    assert n_windows == n_seq2seq(seqs, max_len)


def test_seq2seq_windows_counts() -> None:
    seqs = make_sequences()
    seq_idx, end = seq2seq_windows(seqs, 3)
    # ceil((len - 1) / 3) windows per sequence with len >= 2
    assert Counter(seq_idx.tolist()) == Counter({1: 1, 2: 2, 4: 2, 5: 1, 6: 4})
    assert end[seq_idx == 6].tolist() == [12, 9, 6, 3]


def test_iter_seq2seq_rows() -> None:
    history = np.array([[0, 0, 0], [0, 1, 2], [3, 4, 5]])
    rows = SampleRows(history, np.array([6, 7, 8]))
    batches = list(iter_seq2seq(rows, 2, 4, np.random.default_rng(0), shuffle=False))
    assert [len(b.target) for b in batches] == [2, 1]
    x = np.concatenate([b.history.numpy() for b in batches])
    y = np.concatenate([b.labels.numpy() for b in batches])
    np.testing.assert_array_equal(x, fit_width(history, 4))
    np.testing.assert_array_equal(y[:, :-1], 0)
    np.testing.assert_array_equal(y[:, -1], [6, 7, 8])  # the empty history keeps its label
    assert n_seq2seq(rows, 4) == 3
