"""The training loop shared by every trainable model.

``train`` fits a :class:`~dreamrec.models.base.SequentialRecommender` on a
:class:`~dreamrec.data.dataset.PreparedDataset`, selects the epoch with the best validation
metric (early stopping with ``patience``; or, with ``train.select = any_improved``, the last validation at
which any of ``train.select_metrics`` improved, as the DiffuRec authors' loop), keeps its weights in
``<out_dir>/model.safetensors``
(with ``train.ema_decay``, an exponential moving average of the weights is what is validated,
selected and kept; :mod:`dreamrec.train.ema`)
and writes a resumable, pickle-free checkpoint after every epoch (``<out_dir>/checkpoint/``,
see :mod:`dreamrec.train.checkpoint`). Resuming continues from that checkpoint and produces the
same result as an uninterrupted run with the same seed: the batch order comes from a NumPy
generator and dropout/negative sampling from torch's global generator, both saved.

Files written in ``out_dir``: ``model.safetensors`` (best weights), ``log.jsonl`` (one JSON
object per epoch) and ``checkpoint/``.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamrec.config import TrainConfig
from dreamrec.data.batching import Batch, iter_pairs, iter_seq2seq, n_pairs, n_seq2seq
from dreamrec.data.dataset import PreparedDataset
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.eval.metrics import DEFAULT_KS
from dreamrec.models.base import SequentialRecommender
from dreamrec.train import distributed
from dreamrec.train.checkpoint import (
    best_weights_path,
    has_checkpoint,
    load_average,
    load_checkpoint,
    load_weights,
    model_tensors,
    save_checkpoint,
    save_weights,
)
from dreamrec.threads import set_threads
from dreamrec.train.ema import WeightAverage
from dreamrec.train.health import collapse_cause, item_table_health, popularity_reference, run_warnings

WEIGHTS_FILE = "model.safetensors"
_clock = time.perf_counter  # the budget's clock (a test replaces it)
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainResult:
    """Outcome of :func:`train`. ``best_epoch`` is 0 for models without gradient training."""

    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    stopped_by_budget: bool = False  # ``max_minutes`` ran out before ``epochs`` or early stopping
    warnings: list[str] = field(default_factory=list)  # from :mod:`dreamrec.train.health`
    popularity_val: dict[str, float] | None = None  # popularity's validation metrics, the reference


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def metric_ks(val_metric: str) -> tuple[int, ...]:
    """The cut-offs to evaluate so that ``val_metric`` (e.g. ``"NDCG@20"``) is computed."""
    m = re.fullmatch(r"(HR|NDCG|MRR)@(\d+)", val_metric)
    if not m:
        raise ConfigError(f"train.val_metric {val_metric!r}: expected HR@K, NDCG@K or MRR@K")
    return tuple(sorted(set(DEFAULT_KS) | {int(m.group(2))}))


def validates(config: TrainConfig, epoch: int) -> bool:
    """Whether (1-based) ``epoch`` is a scheduled validation: ``e > eval_offset`` and
    ``(e - eval_offset) % eval_every == 0`` (the trainer validates the last epoch too)."""
    return epoch > config.eval_offset and (epoch - config.eval_offset) % config.eval_every == 0


def validation_due(config: TrainConfig, epoch: int) -> bool:
    """Whether the trainer validates after (1-based) ``epoch``: a scheduled validation or the last epoch
    (a budget stop validates too, decided in the loop)."""
    return validates(config, epoch) or epoch == config.epochs


def improves(config: TrainConfig, state: dict[str, Any], val: dict[str, float]) -> bool:
    """Whether validation ``val`` becomes the selected one (updating ``state["metric_bests"]``).

    ``select = "best"``: ``val_metric`` above the best so far. ``"any_improved"``: any of
    ``select_metrics`` above its own best so far (each metric keeps its own running best, as the
    DiffuRec code, trainer.py:128-134, which starts them at 0 and compares metrics rounded to 4
    decimals of a percent; here they start at -inf and are not rounded)."""
    if config.select == "best":
        return state["best_value"] is None or val[config.val_metric] > state["best_value"]
    bests = state.setdefault("metric_bests", {})
    improved = False
    for name in config.select_metrics:
        if name not in val:
            raise ConfigError(f"train.select_metrics: {name!r} is not a validation metric ({', '.join(val)})")
        if val[name] > bests.get(name, float("-inf")):
            bests[name] = val[name]
            improved = True
    return improved


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters, with torch's fused kernel (one multi-tensor
    update per step instead of a loop of small ops per parameter; the same update rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of (1-based) ``epoch``: ``lr * gamma ** ((epoch - 1) // step)`` under a step decay,
    else ``lr``. A function of the epoch alone, so a resumed run continues the same schedule."""
    if config.lr_decay_step is None:
        return config.lr
    return config.lr * config.lr_decay_gamma ** ((epoch - 1) // config.lr_decay_step)


def batches(
    model: SequentialRecommender, dataset: PreparedDataset, batch_size: int, width: int, rng: np.random.Generator
) -> tuple[Iterator[Batch], int]:
    """(shuffled batch iterator over the training data for the model's ``batch_mode``, its length)."""
    if model.batch_mode == "seq2seq":
        n = n_seq2seq(dataset.train, width)
        it = iter_seq2seq(dataset.train, batch_size, width, rng, shuffle=True)
    elif model.batch_mode == "pairs":
        n = n_pairs(dataset.train)
        it = iter_pairs(dataset.train, batch_size, width, rng, shuffle=True)
    else:
        raise ValueError(f"model {model.name!r} has batch_mode {model.batch_mode!r}: nothing to iterate")
    return it, math.ceil(n / batch_size)


def _summary(entry: dict[str, Any], val_metric: str) -> str:
    parts = [f"epoch {entry['epoch']}"]
    if entry.get("loss") is not None:
        parts.append(f"loss {entry['loss']:.4f}")
    val = entry.get("val")
    if val:
        parts.append(f"val {val_metric} {val[val_metric]:.4f} HR@20 {val.get('HR@20', float('nan')):.4f}")
    parts.append(f"{entry['seconds']:.1f}s")
    if entry.get("best"):
        parts.append("*best*")
    return " | ".join(parts)


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for e in history:
            f.write(json.dumps(e) + "\n")


def _append_log(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the training forward pass and loss run in: bfloat16 autocast when
    ``config.precision == "bf16"``, else nothing."""
    if config.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _LossModule(torch.nn.Module):
    """``forward(batch) = model.loss(batch)``: the form DistributedDataParallel wraps."""

    def __init__(self, model: SequentialRecommender):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.loss(batch)


def compiled_loss(
    loss: Callable[[Batch], torch.Tensor], say: Callable[[str], None]
) -> Callable[[Batch], torch.Tensor]:
    """``loss`` (``model.loss`` or its data-parallel wrapper) under ``torch.compile``; a compilation
    failure (no compiler, an unsupported operation) falls back to the eager ``loss`` for the rest of
    training, with a message."""
    compiled = torch.compile(loss)
    state = {"fn": compiled}

    def loss_fn(batch: Batch) -> torch.Tensor:
        if state["fn"] is compiled:
            try:
                return compiled(batch)
            except Exception as err:  # noqa: BLE001 - any compiler failure: train on, uncompiled
                msg = f"train.compile: compilation failed ({type(err).__name__}: {str(err)[:200]}); training uncompiled"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                say(msg)
                state["fn"] = loss
        return state["fn"](batch)

    return loss_fn


def train_step(
    model: SequentialRecommender, batch: Batch, optimizer: torch.optim.Optimizer, config: TrainConfig,
    device: torch.device, loss_fn: Callable[[Batch], torch.Tensor] | None = None,
) -> float:
    """One optimiser step on ``batch`` (already on ``device``): loss under :func:`autocast`, backward,
    gradient clipping, step; returns the loss value. ``loss_fn`` defaults to ``model.loss`` (the
    trainer passes its compiled form with ``config.compile``)."""
    with autocast(config, device):
        loss = (loss_fn or model.loss)(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.item()


def train(
    model: SequentialRecommender,
    dataset: PreparedDataset,
    config: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset.train``, select on ``dataset.val``; see the module docstring.

    The model must already be built with ``max_len = config.max_len or dataset.max_len``; its
    initial weights come from the caller (seed before building it for a reproducible init).
    With ``resume=True`` and a checkpoint in ``out_dir/checkpoint``, training continues after
    the checkpointed epoch up to ``config.epochs``; without a checkpoint it starts afresh.
    At the end the best weights are loaded into ``model``.
    """
    started = _clock()  # train.max_minutes bounds the whole call, validations included
    out_dir = Path(out_dir)
    env, device = distributed.setup(config.device)  # one process, or this rank of a torchrun job
    main = env.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = (log if main else None) or (lambda _msg: None)
    progress = progress and main
    set_threads(config.threads, "train", processes=env.local_world)  # default: this process's share of the cores
    if device.type == "cuda":
        # TensorFloat-32 matrix products on the GPU (about 10 bits of mantissa: the usual training setting)
        torch.set_float32_matmul_precision("high")
    model.to(device)
    ks = tuple(sorted({k for m in [config.val_metric, *config.select_metrics] for k in metric_ks(m)}))
    width = config.max_len or dataset.max_len
    weights_path = out_dir / WEIGHTS_FILE
    log_path = out_dir / LOG_FILE
    ckpt_dir = out_dir / CHECKPOINT_DIR

    seed_everything(config.seed + env.rank)  # dropout and noise differ between ranks
    rng = np.random.default_rng(config.seed)  # the batch order is the same on every rank

    if config.val_sampler is not None and not hasattr(model, "set_sampler"):
        raise ConfigError(f"train.val_sampler: model {model.name!r} has no diffusion sampler to switch")

    def validate() -> dict[str, float]:
        with average.applied() if average is not None else contextlib.nullcontext():
            return _validate()

    def _validate() -> dict[str, float]:
        own = None
        if config.val_sampler is not None:  # select with the cheaper sampler, then give the model its own back
            own = (model.config.sampler, model.config.sampler_steps)
            model.set_sampler(config.val_sampler, config.val_sampler_steps)
        try:
            return distributed.evaluate_sharded(
                model, dataset.val, env, ks=ks, batch_size=config.eval_batch_size, max_len=width, device=device,
                exclude_seen=config.exclude_seen, seed=config.seed,
            )
        finally:
            if own is not None:
                model.set_sampler(*own)

    model.fit_statistics(dataset)
    # the weight average starts from the initial weights (after fit_statistics, on the device)
    average = None
    if config.ema_decay is not None and model.batch_mode != "none":
        average = WeightAverage(model, config.ema_decay)

    popularity: dict[str, float] | None = None
    if model.batch_mode != "none" and config.health_checks:
        popularity = popularity_reference(dataset, lambda m: distributed.evaluate_sharded(
            m.to(device), dataset.val, env, ks=ks, batch_size=config.eval_batch_size, max_len=width, device=device,
            exclude_seen=config.exclude_seen, seed=config.seed))
        say(f"popularity's validation {config.val_metric}: {popularity[config.val_metric]:.4f} (the reference)")

    if model.batch_mode == "none":
        t0 = _clock()
        val = validate()
        entry = {"epoch": 0, "loss": None, "val": val, "seconds": _clock() - t0, "best": True}
        if main:
            save_weights(model, weights_path)
            _write_log(log_path, [entry])
        say(_summary(entry, config.val_metric))
        return TrainResult(best_epoch=0, best_val=val, history=[entry], stopped_early=False)

    optimizer = make_optimizer(model, config)
    state: dict[str, Any] = {
        "epoch": 0,
        "best_value": None,
        "best_epoch": 0,
        "best_val": {},
        "bad_epochs": 0,
        "stopped_early": False,
        "history": [],
        "ema_decay": config.ema_decay,
        "ema_updates": 0,
        "initial_item_norm": (item_table_health(model) or {}).get("item_norm"),
    }
    if resume and has_checkpoint(ckpt_dir):
        state = load_checkpoint(ckpt_dir, model, optimizer, rng)
        if state.get("ema_decay") != config.ema_decay:
            raise ConfigError(
                f"train.ema_decay is {config.ema_decay} but the checkpoint in {ckpt_dir} was trained with "
                f"{state.get('ema_decay')}: resume with the same value (or train afresh without --resume)"
            )
        if average is not None:
            tensors = load_average(ckpt_dir)
            if tensors is None:
                raise ArtifactError(f"{ckpt_dir}: the checkpoint has no weight average (average.safetensors)")
            average.load(tensors, state["ema_updates"], str(ckpt_dir))
        # early stopping is judged again under this call's patience: a larger one lets a stopped run go on
        state["stopped_early"] = state["best_value"] is not None and state["bad_epochs"] >= config.patience
        if env.rank > 0:  # rank 0's random state was restored: give this rank its own stream again
            seed_everything(config.seed + env.rank + env.world * int(state["epoch"]))
        if main:
            _write_log(log_path, state["history"])  # drop lines of epochs after the checkpoint
        say(f"resuming after epoch {state['epoch']} (best {config.val_metric} at epoch {state['best_epoch']})")
    else:
        if resume:
            say(f"no checkpoint in {ckpt_dir}; starting from scratch")
        if main:
            _write_log(log_path, [])

    base_loss: Callable[[Batch], torch.Tensor] = model.loss
    if env.enabled:  # gradients averaged over the ranks (model.loss is called through the wrapper's forward)
        base_loss = torch.nn.parallel.DistributedDataParallel(
            _LossModule(model), device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True
        )
    loss_fn = compiled_loss(base_loss, say) if config.compile else base_loss
    epoch = state["epoch"]
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    costs = {"train": 0.0, "val": 0.0}  # the largest epoch and validation seconds seen in this call
    out_of_time = False
    aborted = False  # an epoch left unfinished by the budget (its steps are dropped: the checkpoint is before it)
    while epoch < config.epochs and not state["stopped_early"] and not out_of_time:
        will_validate = validation_due(config, epoch + 1)
        if budget is not None and costs["train"] > 0 and distributed.any_rank(
            _clock() - started + costs["train"] + (costs["val"] if will_validate else 0.0) > budget, env
        ):
            out_of_time = True  # the next epoch (and its validation) would not end inside the budget
            break
        epoch += 1
        t0 = _clock()
        model.train()
        lr = epoch_lr(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        it, n_batches = batches(model, dataset, config.batch_size, width, rng)
        total_loss, count = 0.0, 0
        bar = tqdm(it, total=n_batches, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
        for batch in bar:
            if len(batch.target) < env.world:  # too few rows to give every rank one: skipped on all ranks
                continue
            value = train_step(model, distributed.local_part(batch, env).to(device), optimizer, config, device, loss_fn)
            if average is not None:
                average.update()
            if not math.isfinite(value):
                bar.close()
                raise FloatingPointError(f"epoch {epoch}: training loss is {value}")
            total_loss += value
            count += 1
            if count % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / count:.4f}")
            if budget is not None and costs["train"] > 0 and state["best_value"] is not None and distributed.any_rank(
                _clock() - started + costs["val"] > budget, env
            ):  # the budget ends inside this epoch: drop it, keep the validated epochs
                aborted = True
                break
        bar.close()
        if aborted:
            say(f"epoch {epoch}: time budget spent after {count} of {n_batches} batches; the unfinished epoch is "
                f"dropped (the best weights and the checkpoint are from epoch {state['epoch']} or before)")
            epoch -= 1
            out_of_time = True
            break
        costs["train"] = max(costs["train"], _clock() - t0)
        entry: dict[str, Any] = {"epoch": epoch, "loss": distributed.mean_over_ranks(total_loss / max(count, 1), env)}
        if config.lr_decay_step is not None:
            entry["lr"] = lr
        out_of_time = distributed.any_rank(  # every rank stops after the same epoch
            budget is not None and _clock() - started + costs["val"] >= budget, env
        )

        if validation_due(config, epoch) or out_of_time:
            t_val = _clock()
            val = validate()
            costs["val"] = max(costs["val"], _clock() - t_val)
            entry["val"] = val
            _check_health(entry, model, average, state, popularity, config.val_metric, say)
            current = val[config.val_metric]
            if improves(config, state, val):
                state.update(best_value=current, best_epoch=epoch, best_val=val)
                entry["best"] = True
            state["bad_epochs"] = epoch - state["best_epoch"]
            if state["bad_epochs"] >= config.patience:
                state["stopped_early"] = True
        entry["seconds"] = _clock() - t0
        entry.update(model.on_epoch_end(epoch))
        # a budget stop only where nothing else ends training here (early stopping, the last epoch)
        out_of_time = out_of_time and not state["stopped_early"] and epoch < config.epochs
        if out_of_time:
            entry["budget_spent"] = True
        state["epoch"] = epoch
        state["history"].append(entry)
        if average is not None:
            state["ema_updates"] = average.updates
        stop = " | early stop" if state["stopped_early"] else " | time budget spent" if out_of_time else ""
        say(_summary(entry, config.val_metric) + stop)
        if main:  # only rank 0 writes: the average's tensors are gathered here, not on every rank
            best_tensors = averaged = None
            if average is not None:
                averaged = average.tensors()
                if entry.get("best"):
                    with average.applied():  # cloned: on the CPU model_tensors shares the parameters' storage
                        best_tensors = {k: v.clone() for k, v in model_tensors(model).items()}
            _append_log(log_path, entry)
            save_checkpoint(
                ckpt_dir, model, optimizer, state, rng, best_is_current=bool(entry.get("best")), best=best_tensors,
                average=averaged,
            )

    distributed.barrier(env)  # rank 0's last checkpoint is on disk before anyone reads it
    if out_of_time and state["history"]:
        state["history"][-1]["budget_spent"] = True
    best = best_weights_path(ckpt_dir) if state["best_value"] is not None else None
    if best is not None:
        load_weights(model, best)
    # else never validated (epochs == 0): the current weights are the result
    if main:
        save_weights(model, weights_path)  # written once, after training: a crash leaves no stale weights
    found = run_warnings(state["history"], state["best_epoch"], config.val_metric, popularity)
    for w in found:
        say(f"warning: {w}")
        warnings.warn(w, RuntimeWarning, stacklevel=2)
    return TrainResult(
        best_epoch=state["best_epoch"],
        best_val=state["best_val"],
        history=state["history"],
        stopped_early=state["stopped_early"],
        stopped_by_budget=out_of_time,
        warnings=found,
        popularity_val=popularity,
    )


def _check_health(entry: dict[str, Any], model: SequentialRecommender, average: WeightAverage | None,
                  state: dict[str, Any], popularity: dict[str, float] | None, val_metric: str,
                  say: Callable[[str], None]) -> None:
    """Add the item table's health and the popularity comparison of a validated epoch to its log ``entry``
    (the validated weights: the average where there is one); say when either looks wrong."""
    if popularity is None:
        return
    with average.applied() if average is not None else contextlib.nullcontext():
        health = item_table_health(model)
    if health is not None:
        entry.update(health)
        cause = collapse_cause(health, state.get("initial_item_norm"))
        if cause:
            entry["collapse"] = cause
            say(f"epoch {entry['epoch']}: item table collapse: {cause}")
    if entry["val"][val_metric] <= popularity[val_metric]:
        entry["below_popularity"] = True
        say(f"epoch {entry['epoch']}: validation {val_metric} {entry['val'][val_metric]:.4f} is not above "
            f"popularity's {popularity[val_metric]:.4f}")
