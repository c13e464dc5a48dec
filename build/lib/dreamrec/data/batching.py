"""Vectorised training batches from arrays (no per-batch DataFrame work).

Two views of the same training data:

* ``pairs``: one (history, target) sample per event. From :class:`SampleRows` the rows
  themselves; from :class:`Sequences` every position ``t >= 1`` of every sequence (the history is
  the ``max_len`` items before it). Used by models trained on the next item only (DreamRec,
  GRU4Rec with ``last`` loss, SASRec on the DreamRec split).
* ``seq2seq``: windows of ``max_len`` inputs with a label at every position (SASRec's original
  training). From :class:`Sequences` each sequence is cut into consecutive windows so every
  transition is a label exactly once; from :class:`SampleRows` the history with only the last
  label set (rows are already one sample each).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dreamrec.data.dataset import SampleRows, Sequences, TrainData


@dataclass
class Batch:
    """``history`` [B, L] right-aligned (0 = pad); ``target`` [B]; ``labels`` [B, L] or None.

    ``labels[b, j]`` is the item that follows ``history[b, :j+1]`` (0 = no loss there); in
    ``pairs`` mode ``labels`` is None and ``target`` is the single label.
    """

    history: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.history.to(device),
            self.target.to(device),
            None if self.labels is None else self.labels.to(device),
        )


def fit_width(history: np.ndarray, max_len: int) -> np.ndarray:
    """Keep the most recent ``max_len`` columns of a right-aligned matrix (pad on the left)."""
    w = history.shape[1]
    if w == max_len:
        return history
    if w > max_len:
        return history[:, w - max_len :]
    out = np.zeros((history.shape[0], max_len), dtype=history.dtype)
    out[:, max_len - w :] = history
    return out


def _gather_windows(seqs: Sequences, seq_idx: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """Items ``seq[end-width:end]`` of each chosen sequence, right-aligned, 0 before its start."""
    start = seqs.offsets[seq_idx]
    pos = (start + end)[:, None] - width + np.arange(width)[None, :]
    valid = pos >= start[:, None]
    out = np.where(valid, seqs.items[np.clip(pos, 0, None)], 0)
    return out.astype(np.int64)


def pair_index(train: TrainData) -> tuple[np.ndarray, np.ndarray]:
    """(sequence index, position of the target) for every pair sample of ``Sequences``."""
    assert isinstance(train, Sequences)
    lengths = train.lengths()
    n = np.maximum(lengths - 1, 0)
    seq_idx = np.repeat(np.arange(len(lengths)), n)
    # position t runs 1..len-1 within each sequence
    first = np.repeat(np.cumsum(n) - n, n)
    t = np.arange(n.sum()) - first + 1
    return seq_idx, t


def n_pairs(train: TrainData) -> int:
    if isinstance(train, SampleRows):
        return len(train)
    return int(np.maximum(train.lengths() - 1, 0).sum())


def iter_pairs(
    train: TrainData, batch_size: int, max_len: int, rng: np.random.Generator, shuffle: bool = True
) -> Iterator[Batch]:
    """Batches of single (history, target) samples covering the training data once."""
    if isinstance(train, SampleRows):
        order = rng.permutation(len(train)) if shuffle else np.arange(len(train))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            h = fit_width(train.history[idx], max_len)
            yield Batch(torch.from_numpy(h), torch.from_numpy(train.target[idx]))
        return
    seq_idx, t = pair_index(train)
    order = rng.permutation(len(t)) if shuffle else np.arange(len(t))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        h = _gather_windows(train, seq_idx[idx], t[idx], max_len)
        y = train.items[train.offsets[seq_idx[idx]] + t[idx]]
        yield Batch(torch.from_numpy(h), torch.from_numpy(y.astype(np.int64)))


def seq2seq_windows(train: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(sequence index, window end) covering every transition of every sequence exactly once.

    A window ending at ``e`` holds inputs ``seq[e-max_len-1 : e-1]`` and labels
    ``seq[e-max_len : e]``; ends step back from the sequence end by ``max_len``.
    """
    lengths = train.lengths()
    n_win = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)
    seq_idx = np.repeat(np.arange(len(lengths)), n_win)
    k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    end = lengths[seq_idx] - k * max_len
    return seq_idx, end


def iter_seq2seq(
    train: TrainData, batch_size: int, max_len: int, rng: np.random.Generator, shuffle: bool = True
) -> Iterator[Batch]:
    """Batches of windows with a label at every position (see module docstring)."""
    if isinstance(train, SampleRows):
        for b in iter_pairs(train, batch_size, max_len, rng, shuffle):
            labels = torch.zeros_like(b.history)
            labels[:, -1] = b.target
            yield Batch(b.history, b.target, labels)
        return
    seq_idx, end = seq2seq_windows(train, max_len)
    order = rng.permutation(len(end)) if shuffle else np.arange(len(end))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        si, e = seq_idx[idx], end[idx]
        labels = _gather_windows(train, si, e, max_len)
        inputs = _gather_windows(train, si, e - 1, max_len)
        # a label only where its input exists (the first item of a sequence has no history)
        labels = np.where(inputs != 0, labels, 0)
        yield Batch(torch.from_numpy(inputs), torch.from_numpy(labels[:, -1].copy()), torch.from_numpy(labels))


def n_seq2seq(train: TrainData, max_len: int) -> int:
    if isinstance(train, SampleRows):
        return len(train)
    return len(seq2seq_windows(train, max_len)[0])


def labelled_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool mask ``[B, L]`` of positions carrying a label, their labels ``[N]``).

    In ``pairs`` batches (``labels is None``) only the last position is labelled, with ``target``.
    """
    if batch.labels is None:
        mask = torch.zeros_like(batch.history, dtype=torch.bool)
        mask[:, -1] = batch.target > 0
        return mask, batch.target[batch.target > 0]
    mask = batch.labels > 0
    return mask, batch.labels[mask]
