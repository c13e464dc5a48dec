"""A table's run ledger: one record per finished (row, seed), kept beside the table it feeds.

``<results>/<table>.runs.jsonl`` holds a JSON line per seed that finished: the row and seed, the run's config
(as its run directory's ``config.yaml`` holds it), a fingerprint of the prepared split it trained and was
tested on, its validation and test metrics, its best epoch, and when and where it finished. ``dreamrec bench``
appends (or replaces) a record as each seed finishes, and treats a record whose config and split match the
row's as a finished seed, as it would a finished run directory. A table committed with its ledger can so grow
over several invocations, sessions and machines (one row on a GPU, another on a CPU), and it outlives the run
directories, which hold the weights and are too large to keep.

Writes are atomic and, where the platform has ``fcntl``, serialised by a lock file, so two ``dreamrec bench``
processes filling different rows of one table do not lose each other's records (the lock is on the folder).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dreamrec.atomic import atomic_write_text
from dreamrec.data.dataset import PreparedDataset, SampleRows
from dreamrec.errors import ArtifactError

SUFFIX = ".runs.jsonl"
Key = tuple[str, int]  # (row name, seed)


def ledger_path(results_dir: str | Path, table: str) -> Path:
    return Path(results_dir) / f"{table}{SUFFIX}"


def dataset_fingerprint(ds: PreparedDataset) -> str:
    """``sha256:<hex>`` of what a run learns and is scored on: protocol, window, item ids, and every split's
    arrays. Two preparations of the same published file agree; any change to the split does not."""
    h = hashlib.sha256()
    h.update(json.dumps([ds.protocol, int(ds.max_len), int(ds.n_items)]).encode())
    h.update("\x1f".join(map(str, ds.item_ids.tolist())).encode())
    for part in (ds.train, ds.val, ds.test):
        arrays = (part.history, part.target) if isinstance(part, SampleRows) else (part.items, part.offsets)
        for a in arrays:
            a = np.ascontiguousarray(a, dtype=np.int64)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def read_ledger(path: str | Path) -> dict[Key, dict[str, Any]]:
    """The records of ``path`` by (row, seed) (empty when there is no ledger yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    records: dict[Key, dict[str, Any]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (str(rec["row"]), int(rec["seed"]))
            rec["config"], rec["dataset"], rec["test"]  # noqa: B018 (the fields a reuse needs)
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{path}:{i}: not a run record ({type(e).__name__}: {e}); fix or remove that line") from None
        records[key] = rec
    return records


def run_record(row: str, seed: int, run_dir: Path, fingerprint: str, machine: str) -> dict[str, Any]:
    """The ledger record of the finished run in ``run_dir`` (its ``config.yaml`` and ``metrics.json``)."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    finished = _dt.datetime.fromtimestamp(metrics_file.stat().st_mtime, _dt.timezone.utc)
    return {
        "row": row,
        "seed": int(seed),
        "finished": finished.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "dataset": fingerprint,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_trained": metrics.get("epochs_trained"),
        "stopped_by_budget": bool(metrics.get("stopped_by_budget", False)),
        "seconds": metrics.get("seconds"),
        "val": metrics.get("val"),
        "test": metrics["test"],
    }


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (no lock file left behind), where the platform has one."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: the atomic write alone
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    """Add ``record`` to the ledger at ``path``, replacing the record of the same (row, seed)."""
    path = Path(path)
    key = (record["row"], int(record["seed"]))
    with _locked(path.parent):
        records = read_ledger(path)
        records[key] = record
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records.values())
        atomic_write_text(path, text)
