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

Nothing is written before every check has passed: the output folder (:func:`check_run_dir`), the model's
size against memory (:func:`dreamrec.models.memory.check_model_memory`) and, on ``--resume``, the new
settings against the run's (:mod:`dreamrec.train.resume`), its item catalog and its checkpoint.
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from dreamrec import __version__
from dreamrec.atomic import atomic_write, atomic_write_text, remove
from dreamrec.config import RunConfig, build_run_config
from dreamrec.data.dataset import PreparedDataset, SampleRows, check_apart, foreign_files
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.eval.metrics import DEFAULT_KS
from dreamrec.models import build_model
from dreamrec.models.base import SequentialRecommender
from dreamrec.models.memory import check_model_memory
from dreamrec.threads import set_threads
from dreamrec.train.warm_start import same_item_catalog, warm_start

# every file and folder `dreamrec train` writes into a run directory
RUN_FILES = frozenset(
    {"config.yaml", "run.json", "items.parquet", "model.safetensors", "metrics.json", "log.jsonl", "checkpoint"}
)
TRAIN_COPIES = 4  # weights, gradients and Adam's two moments live at once while training
LOAD_COPIES = 2  # the weights and the file's tensors while loading


def check_run_dir(
    out_dir: str | Path, data_dir: str | Path | None, *, resume: bool = False, overwrite: bool = False
) -> None:
    """Raise unless ``train`` may write the run directory ``out_dir``:

    * ``out_dir`` must not be, lie inside, or contain the dataset folder ``data_dir``;
    * ``resume``: it must hold a run with a ``checkpoint/`` (files of others in it are left alone);
    * otherwise an existing run (finished or not) is replaced only with ``overwrite``, and a folder holding
      files dreamrec did not write (:data:`RUN_FILES`) is refused even then: they are never deleted.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (replace it), not both")
    if data_dir:
        check_apart(out_dir, [data_dir], "the dataset folder", replaces=False)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out {out_dir} is a file, not a run directory")
    if resume:
        if not (out_dir / "checkpoint").exists():
            raise ArtifactError(f"{out_dir}: --resume given but there is no checkpoint/ to resume from")
        return
    foreign = foreign_files(out_dir, RUN_FILES)
    if foreign:
        names = ", ".join(p.name for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ArtifactError(f"--out {out_dir} is not a run directory: it holds {names}, which dreamrec did not write "
                            "and never deletes; choose a new or empty folder")
    if overwrite:
        return
    if (out_dir / "model.safetensors").exists():
        raise ArtifactError(f"{out_dir}: already holds a trained run; use --resume, --overwrite or another --out")
    if (out_dir / "checkpoint").exists():
        raise ArtifactError(
            f"{out_dir}: holds an unfinished run (checkpoint/); use --resume, --overwrite or another --out"
        )
    present = sorted(p.name for p in out_dir.iterdir() if p.name in RUN_FILES) if out_dir.is_dir() else []
    if present:
        raise ArtifactError(f"{out_dir}: holds the files of a run that never finished an epoch ({', '.join(present)}); "
                            "use --overwrite or another --out")


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
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    dataset: PreparedDataset | None = None,
) -> dict[str, Any]:
    """Train ``config`` on the prepared dataset at ``data_dir`` into ``out_dir``; returns metrics.json.

    ``resume`` continues the run's checkpoint (with the changes :mod:`dreamrec.train.resume` allows,
    recorded as ``resumes`` in run.json and metrics.json); ``overwrite`` replaces a run already there
    (see :func:`check_run_dir`).

    Under ``torchrun`` every process calls this; rank 0 writes the run directory, the others train
    their share of each batch (:mod:`dreamrec.train.distributed`)."""
    from dreamrec.train import distributed
    from dreamrec.train.trainer import seed_everything, train

    out_dir = Path(out_dir)
    check_run_dir(out_dir, data_dir, resume=resume, overwrite=overwrite)
    dataset = dataset if dataset is not None else PreparedDataset.load(data_dir)
    # on the CPU all copies live in this machine's memory; on a GPU it holds the initial weights only
    check_model_memory(config.model, dataset.n_items, config.train.max_len or dataset.max_len, config.params,
                       copies=TRAIN_COPIES if config.train.device == "cpu" else 1, purpose="train",
                       source=f"--out {out_dir}")

    env, device = distributed.setup(config.train.device)
    set_threads(config.train.threads, "train", processes=env.local_world)
    seed_everything(config.train.seed)  # the initial weights depend on the seed too
    config, model = resolve(config, dataset)
    resumes = _check_resume(out_dir, config, dataset, model) if resume else []
    if config.train.init_from and not resume:  # a resumed run continues its own weights
        copied, total = warm_start(model, config.train.init_from, dataset)
        if log is not None:
            log(f"initialised {len(copied)} of {total} tensors from {config.train.init_from}")
    distributed.barrier(env)  # every rank has checked the directory before rank 0 writes into it
    if env.is_main:
        if overwrite:  # the checks passed: the old run goes (only dreamrec's files are there)
            for name in RUN_FILES:
                remove(out_dir / name)
        _write_run_files(config, dataset, data_dir, out_dir, resumes,
                         empty_history=empty_history_answer(model, dataset))
    model.to(device)
    t0 = time.perf_counter()
    result = train(model, dataset, config.train, out_dir, resume=resume, progress=progress, log=log)
    t1 = time.perf_counter()
    test = distributed.evaluate_sharded(
        model, dataset.test, env, ks=DEFAULT_KS, batch_size=config.train.eval_batch_size, device=device,
        seed=config.train.seed, exclude_seen=config.train.exclude_seen,
    )
    metrics = {"best_epoch": result.best_epoch, "val": result.best_val, "test": test,
               "epochs_trained": result.history[-1]["epoch"] if result.history else 0,
               "stopped_by_budget": result.stopped_by_budget,
               # wall-clock seconds: the training call (bounded by train.max_minutes) and the test evaluation
               "seconds": {"train": round(t1 - t0, 3), "test": round(time.perf_counter() - t1, 3)},
               "popularity_val": result.popularity_val, "warnings": result.warnings}
    if resumes:  # the settings changed on the way (config.yaml holds the last ones)
        metrics["resumes"] = resumes
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


def _check_resume(
    out_dir: Path, config: RunConfig, dataset: PreparedDataset, model: SequentialRecommender
) -> list[dict[str, Any]]:
    """Raise unless ``out_dir`` can be resumed under the resolved ``config`` on ``dataset`` with ``model``
    (same settings up to :mod:`dreamrec.train.resume`'s allowed changes, same item catalog, a readable
    checkpoint of ``model``'s shapes); returns ``run.json``'s ``resumes`` with this one's changes added."""
    from dreamrec.train.checkpoint import check_checkpoint, checkpoint_state
    from dreamrec.train.resume import resume_changes

    config_file = out_dir / "config.yaml"
    if not config_file.is_file():
        raise ArtifactError(
            f"{out_dir}: --resume needs the run's config.yaml to check the settings against; it is missing"
        )
    try:
        data = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_file}: invalid YAML: {e}") from None
    old = build_run_config(data, str(config_file))
    items_file = out_dir / "items.parquet"
    if items_file.is_file():
        if not same_item_catalog(items_file, dataset):
            raise ArtifactError(f"{out_dir}: --resume on a dataset whose item catalog differs from the one the run "
                                "was trained on; use the run's dataset")
    state = checkpoint_state(out_dir / "checkpoint")
    trained = int(state["epoch"]) if state else 0
    changed = resume_changes(old, config, trained, str(out_dir))
    if state:
        check_checkpoint(out_dir / "checkpoint", model)
    info_file = out_dir / "run.json"
    try:
        resumes = list(json.loads(info_file.read_text()).get("resumes", [])) if info_file.is_file() else []
    except (json.JSONDecodeError, AttributeError):
        raise ArtifactError(f"{info_file}: not a JSON object") from None
    return resumes + [{"after_epoch": trained, "changed": changed}] if changed else resumes


def _write_run_files(config: RunConfig, dataset: PreparedDataset, data_dir: str | Path, out_dir: Path,
                     resumes: list[dict[str, Any]] | None = None, *, empty_history: str = "model") -> None:
    """``config.yaml``, ``run.json`` and ``items.parquet`` of a run about to train."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    run_info: dict[str, Any] = {
        "n_items": dataset.n_items,
        "max_len": config.train.max_len,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "protocol": dataset.protocol,
        "empty_history": empty_history,
        "dreamrec_version": __version__,
    }
    if resumes:
        run_info["resumes"] = resumes
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
    atomic_write(path, table.to_parquet)


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
    n_items, max_len = int(info["n_items"]), int(info["max_len"])
    check_model_memory(config.model, n_items, max_len, config.params, copies=LOAD_COPIES, purpose="load",
                       source=str(run_dir / "config.yaml"))
    model = build_model(config.model, n_items, max_len, config.params)
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
