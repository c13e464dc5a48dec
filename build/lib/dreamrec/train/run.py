"""A training run as a directory: what `dreamrec train` writes and `evaluate`/`recommend` read.

``RUN_DIR/``
  ``config.yaml``       resolved RunConfig (model name, its full parameters, trainer settings)
  ``run.json``          n_items, max_len, the data directory it was trained on, how an empty history is
                        answered (:func:`empty_history_answer`), dreamrec version
  ``items.parquet``     the item id map (row i = internal id i + 1), each item's training count
                        (``train_count``) and item metadata where known
  ``model.safetensors`` best weights (by the validation metric)
  ``metrics.json``      best validation metrics, test metrics, best epoch
  ``log.jsonl``         one line per epoch; ``checkpoint/`` for ``--resume``
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import yaml

from dreamrec import __version__
from dreamrec.config import RunConfig, build_run_config
from dreamrec.data.dataset import PreparedDataset, SampleRows
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.eval.metrics import DEFAULT_KS
from dreamrec.models import build_model
from dreamrec.models.base import SequentialRecommender


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve(config: RunConfig, dataset: PreparedDataset) -> tuple[RunConfig, SequentialRecommender]:
    """Build the model and return the config with every default filled in."""
    max_len = config.train.max_len or dataset.max_len
    if max_len > dataset.max_len:
        # val/test histories were cut to the dataset's window: a wider model window would train on
        # longer histories than it is evaluated on
        raise ConfigError(
            f"train.max_len={max_len} exceeds the dataset's history window ({dataset.max_len}); "
            "prepare the data with a larger --max-len or use a smaller train.max_len"
        )
    model = build_model(config.model, dataset.n_items, max_len, config.params)
    resolved = config.model_copy(
        update={"params": model.config.model_dump(), "train": config.train.model_copy(update={"max_len": max_len})}
    )
    return resolved, model


def train_run(
    config: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    dataset: PreparedDataset | None = None,
) -> dict[str, Any]:
    """Train ``config`` on the prepared dataset at ``data_dir`` into ``out_dir``; returns metrics.json.

    Under ``torchrun`` every process calls this; rank 0 writes the run directory, the others train
    their share of each batch (:mod:`dreamrec.train.distributed`)."""
    from dreamrec.train import distributed
    from dreamrec.train.trainer import train

    out_dir = Path(out_dir)
    dataset = dataset if dataset is not None else PreparedDataset.load(data_dir)
    from dreamrec.train.trainer import seed_everything

    env, device = distributed.setup(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)  # the initial weights depend on the seed too
    config, model = resolve(config, dataset)
    if resume and not (out_dir / "checkpoint").exists():
        raise ArtifactError(f"{out_dir}: --resume given but there is no checkpoint/ to resume from")
    if not resume and (out_dir / "model.safetensors").exists():
        raise ArtifactError(f"{out_dir}: already holds a trained run; use --resume or another --out")
    if not resume and (out_dir / "checkpoint").exists():
        raise ArtifactError(f"{out_dir}: holds an unfinished run (checkpoint/); use --resume or another --out")
    distributed.barrier(env)  # every rank has checked the directory before rank 0 writes into it
    if env.is_main:
        _write_run_files(config, dataset, data_dir, out_dir, empty_history=empty_history_answer(model, dataset))
    model.to(device)
    t0 = time.perf_counter()
    result = train(model, dataset, config.train, out_dir, resume=resume, progress=progress, log=log)
    t1 = time.perf_counter()
    test = distributed.evaluate_sharded(
        model, dataset.test, env, ks=DEFAULT_KS, batch_size=config.train.eval_batch_size, device=device,
        seed=config.train.seed,
    )
    metrics = {"best_epoch": result.best_epoch, "val": result.best_val, "test": test,
               "epochs_trained": result.history[-1]["epoch"] if result.history else 0,
               "stopped_by_budget": result.stopped_by_budget,
               # wall-clock seconds: the training call (bounded by train.max_minutes) and the test evaluation
               "seconds": {"train": round(t1 - t0, 3), "test": round(time.perf_counter() - t1, 3)},
               "popularity_val": result.popularity_val, "warnings": result.warnings}
    if env.is_main:
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    distributed.barrier(env)  # the run directory is complete when any rank returns
    return metrics


def empty_history_answer(model: SequentialRecommender, dataset: PreparedDataset) -> str:
    """How the run answers a history with no known item: ``"model"`` where the model saw empty histories in
    training (rows with no history under the DreamRec protocol) or needs none (popularity), else
    ``"popularity"``: the training counts (``items.parquet``'s ``train_count``), since a query for an empty
    history that no training step reached (SASRec's ``empty_state`` under leave-one-out) means nothing."""
    if model.batch_mode == "none":
        return "model"
    train = dataset.train
    trained = isinstance(train, SampleRows) and bool((train.history == 0).all(axis=1).any())
    return "model" if trained else "popularity"


def _write_run_files(
    config: RunConfig, dataset: PreparedDataset, data_dir: str | Path, out_dir: Path, *, empty_history: str = "model"
) -> None:
    """``config.yaml``, ``run.json`` and ``items.parquet`` of a run about to train."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    run_info = {
        "n_items": dataset.n_items,
        "max_len": config.train.max_len,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "protocol": dataset.protocol,
        "empty_history": empty_history,
        "dreamrec_version": __version__,
    }
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2))
    _save_items(dataset, out_dir / "items.parquet")


def _save_items(dataset: PreparedDataset, path: Path) -> None:
    table = pd.DataFrame({"item_id": dataset.item_ids.reset_index(drop=True),
                          "train_count": dataset.train_item_counts()[1:]})
    if dataset.item_meta is not None:
        meta = dataset.item_meta.reset_index(drop=True)
        for c in meta.columns:
            if c != "item_id":
                table[c] = meta[c]
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp)
    os.replace(tmp, path)


@dataclass
class LoadedRun:
    config: RunConfig
    model: SequentialRecommender
    items: pd.DataFrame
    info: dict[str, Any]
    path: Path

    @property
    def item_ids(self) -> pd.Series:
        return self.items["item_id"]

    def check_dataset(self, dataset: PreparedDataset, name: str | Path = "the dataset") -> None:
        """Raise :class:`ArtifactError` unless ``dataset`` has the item catalog this run was trained on
        (the same ids in the same order), so that its rows can be scored by this model."""
        if dataset.n_items != self.model.n_items or dataset.item_ids.tolist() != self.item_ids.tolist():
            raise ArtifactError(f"{name}: its item catalog differs from the one {self.path} was trained on")


def load_run(
    run_dir: str | Path,
    device: str = "cpu",
    *,
    sampler: str | None = None,
    steps: int | None = None,
    sampler_options: dict[str, Any] | None = None,
) -> LoadedRun:
    """Rebuild the trained model of ``run_dir`` from YAML, JSON, Parquet and safetensors (no pickle).

    ``sampler`` / ``steps`` switch a diffusion model's inference sampler (ddpm | ddim | onestep,
    S steps) without retraining; ``sampler_options`` are further keyword arguments of the model's
    ``set_sampler`` (e.g. DreamRec's ``guidance_w`` and ``correction_scale``; None values are
    ignored). For models without a sampler, or options the model does not have, giving them is an
    error.
    """
    from dreamrec.train.checkpoint import load_weights

    run_dir = Path(run_dir)
    for name in ("config.yaml", "run.json", "items.parquet", "model.safetensors"):
        if not (run_dir / name).exists():
            raise ArtifactError(f"{run_dir}: not a finished run ({name} missing)")
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{run_dir / 'config.yaml'}: invalid YAML: {e}") from None
    config = build_run_config(data, str(run_dir / "config.yaml"))
    info = json.loads((run_dir / "run.json").read_text())
    model = build_model(config.model, int(info["n_items"]), int(info["max_len"]), config.params)
    load_weights(model, run_dir / "model.safetensors")
    options = {k: v for k, v in (sampler_options or {}).items() if v is not None}
    if sampler is not None or steps is not None or options:
        if not hasattr(model, "set_sampler"):
            raise ConfigError(f"model {config.model!r} has no diffusion sampler to set")
        known = [n for n, p in inspect.signature(model.set_sampler).parameters.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"model {config.model!r} has no sampler option {', '.join(map(repr, unknown))} "
                              f"(its options: {', '.join(known) or 'none'})")
        try:
            model.set_sampler(sampler, steps, **options)
        except ValueError as e:  # pydantic validation
            raise ConfigError(f"bad sampler settings for {config.model!r}: {e}") from None
        config = config.model_copy(update={"params": model.config.model_dump()})
    model.to(device).eval()
    items = pd.read_parquet(run_dir / "items.parquet")
    return LoadedRun(config, model, items, info, run_dir)
