"""Metrics by target-frequency segment (dreamrec.eval.segments), against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dreamrec.eval.segments import bucket_labels, frequency_buckets, metrics_by_segment


def test_bucket_labels_and_validation():
    assert bucket_labels((0, 1, 6, 21)) == ["0", "1-5", "6-20", "21+"]
    assert bucket_labels((0,)) == ["0+"]
    assert bucket_labels((0, 2, 3)) == ["0-1", "2", "3+"]
    for bad in ((), (1, 5), (0, 5, 5), (0, 6, 3)):
        with pytest.raises(ValueError, match="bucket edges"):
            bucket_labels(bad)


def test_frequency_buckets_by_hand():
    # internal ids 1..6 (index 0 = padding) with training counts 0, 1, 5, 6, 20, 21
    counts = np.array([0, 0, 1, 5, 6, 20, 21])
    targets = np.array([1, 2, 3, 4, 5, 6, 6, 1])
    b = frequency_buckets(counts, targets, edges=(0, 1, 6, 21))
    assert b.tolist() == [0, 1, 1, 2, 2, 3, 3, 0]
    with pytest.raises(ValueError, match="target ids"):
        frequency_buckets(counts, np.array([7]), edges=(0, 1))
    with pytest.raises(ValueError, match="non-negative"):
        frequency_buckets(np.array([0, -1]), np.array([1]), edges=(0, 1))


def test_metrics_by_segment_by_hand():
    ranks = np.array([0, 30, 3, 19, 25, 1])
    segment = np.array([0, 0, 1, 1, 1, 2])
    out = metrics_by_segment(ranks, segment, ["a", "b", "c", "d"], ks=(20,))
    assert [(o["segment"], o["n"]) for o in out] == [("a", 2), ("b", 3), ("c", 1), ("d", 0)]
    assert out[0]["share"] == pytest.approx(2 / 6) and out[3]["metrics"] == {}
    assert out[0]["metrics"]["HR@20"] == pytest.approx(0.5)
    assert out[1]["metrics"]["HR@20"] == pytest.approx(2 / 3)
    assert out[1]["metrics"]["NDCG@20"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(21)) / 3)
    assert out[2]["metrics"]["NDCG@20"] == pytest.approx(1 / math.log2(3))
    # the share-weighted sum of the segments is the overall metric
    overall = sum(o["share"] * o["metrics"]["HR@20"] for o in out if o["n"])
    assert overall == pytest.approx(np.mean(ranks < 20))
    with pytest.raises(ValueError, match="one length"):
        metrics_by_segment(ranks, segment[:-1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="segment indices"):
        metrics_by_segment(ranks, segment, ["a", "b"])
