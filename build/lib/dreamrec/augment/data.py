"""DiffuASR's data side: training pairs ``(S_aug, S_raw)`` from the TRAINING split, the choice of the
sequences to augment, and the augmented :class:`PreparedDataset`.

Training data of both kinds is read as sequences: :class:`Sequences` as they are, :class:`SampleRows` as
``history + [target]`` per row (a row is one window of a user's sequence; the Zhihu-style split has a
row per prefix, so the rows' starts already slide over each user's sequence).

Augmentation prepends the ``M`` generated items to each selected training sequence: to the sequence
itself (:class:`Sequences`), or to the row's history (:class:`SampleRows`; the target stays the
target, and is never shown to the generator: the augmented input must not carry its own label).
Rows keep the dataset's window (``row_width="window"``: the most recent ``W`` items are kept, so a
row of ``L`` items gains ``min(M, W - L)`` of them, those nearest its history) unless
``row_width="widen"`` (every row gets ``M`` more columns). Validation and test are the input's own
objects, unchanged, and the item catalog, ``max_len`` and protocol too.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from dreamrec.augment.diffuasr import DiffuASRConfig, DiffuASRGenerator
from dreamrec.data.batching import fit_width
from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, TrainData, pad_left
from dreamrec.errors import DataError


def as_sequences(train: TrainData) -> Sequences:
    """``Sequences`` as they are; ``SampleRows`` as one sequence ``history + [target]`` per row."""
    if isinstance(train, Sequences):
        return train
    full = np.concatenate([train.history, train.target[:, None]], axis=1)
    lengths = (full != 0).sum(1)
    offsets = np.zeros(len(full) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(full[full != 0], offsets, train.user)  # right-aligned rows: row-major order is time order


def training_pairs(train: TrainData, cfg: DiffuASRConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(S_aug [N, M] int64, S_raw [N, cond_len] int32, zero-padded)`` from every sequence of more than M items:
    ``S_aug = v_{i+1..i+M}``, ``S_raw`` the (at most ``cond_len``) items after it; ``i = 0`` (``train_windows =
    "start"``, and always for rows) or every ``i`` with an item after the block (``"all"``)."""
    seqs = as_sequences(train)
    every = cfg.train_windows == "all" and isinstance(train, Sequences)
    lengths = seqs.lengths()
    M, K = cfg.M, cfg.cond_len
    n_win = np.where(lengths > M, lengths - M if every else 1, 0)
    seq_idx = np.repeat(np.arange(len(lengths)), n_win)
    start = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    base = seqs.offsets[seq_idx] + start
    aug = seqs.items[base[:, None] + np.arange(M)[None, :]]
    pos = base[:, None] + M + np.arange(K)[None, :]
    end = seqs.offsets[seq_idx + 1][:, None]
    raw = np.where(pos < end, seqs.items[np.minimum(pos, max(len(seqs.items) - 1, 0))], 0)
    return aug.astype(np.int64), raw.astype(np.int32)


def train_lengths(train: TrainData) -> np.ndarray:
    """Items per training sequence (``Sequences``) or per row history (``SampleRows``)."""
    return train.lengths() if isinstance(train, Sequences) else (train.history != 0).sum(1)


def selected(train: TrainData, cfg: DiffuASRConfig) -> np.ndarray:
    """Boolean mask of the training sequences (rows) to augment: at least ``augment_min_len`` items, fewer than
    ``augment_below`` when set, and for rows kept at the window, room left in it."""
    n = train_lengths(train)
    sel = n >= cfg.augment_min_len
    if cfg.augment_below is not None:
        sel &= n < cfg.augment_below
    if isinstance(train, SampleRows) and cfg.row_width == "window":
        sel &= n < train.width
    return sel


def augment_dataset(dataset: PreparedDataset, generator: DiffuASRGenerator,
                    config: DiffuASRConfig | None = None) -> PreparedDataset:
    """A new dataset whose training data has ``M`` generated items prepended to every selected sequence (row).

    ``config`` (default: the generator's) gives the selection, the row width, ``exclude_seen`` and the seed;
    the sampler settings are the generator's. Provenance goes to ``info["augmentation"]`` (a list, one entry
    per augmentation applied)."""
    cfg = config or generator.config
    if generator.n_items != dataset.n_items:
        raise DataError(f"the generator knows {generator.n_items} items, the dataset has {dataset.n_items}")
    if cfg.M != generator.config.M:
        raise DataError(f"config.M={cfg.M} differs from the generator's M={generator.config.M}")
    train = dataset.train
    idx = np.flatnonzero(selected(train, cfg))
    entry: dict = {"method": "diffuasr", "config": cfg.model_dump(mode="json"), "n_train": len(train),
                   "n_augmented": len(idx), "items_per_sequence": cfg.M,
                   "n_train_pairs": generator.n_train_pairs}
    if isinstance(train, Sequences):
        seqs = [train.get(u) for u in range(len(train))]
        chosen = [seqs[i] for i in idx]
        hist = pad_left(chosen, max((len(s) for s in chosen), default=1))
        gen = generator.generate(hist, exclude_seen=cfg.exclude_seen, seed=cfg.seed) if len(idx) else None
        for j, i in enumerate(idx):
            seqs[i] = np.concatenate([gen[j], seqs[i]])
        new_train: TrainData = Sequences.from_lists(seqs, train.user.copy())
        entry["train_kind"] = "sequences"
    else:
        width = train.width if cfg.row_width == "window" else train.width + cfg.M
        history = fit_width(train.history, width).copy()
        if len(idx):
            gen = generator.generate(train.history[idx], exclude_seen=cfg.exclude_seen, seed=cfg.seed)
            rows = [np.concatenate([g, h[h != 0]]) for g, h in zip(gen, train.history[idx])]
            history[idx] = pad_left(rows, width)
        new_train = SampleRows(history, train.target.copy(), train.user.copy())
        entry.update(train_kind="rows", row_width=cfg.row_width, train_width=width)
    info = {**dataset.info, "augmentation": [*dataset.info.get("augmentation", []), entry]}
    return replace(dataset, train=new_train, info=info)
