"""Which settings ``dreamrec train --resume`` may change, checked before anything is written.

A resumed run continues the weights, optimiser state and random streams of its checkpoint, so it must run
the experiment the checkpoint belongs to. The new resolved config is compared field by field with the
run's ``config.yaml``:

* may change freely (``FREE``): ``train.epochs``, ``train.patience`` (early stopping is judged again under
  the new value), ``train.max_minutes`` (a budget per call), and the execution settings
  ``train.threads``, ``train.device``, ``train.precision``, ``train.compile`` (where and how fast the
  remaining epochs run: they change rounding and random draws of those epochs, not the experiment);
* may change where the epochs already trained keep their learning rate (``SCHEDULE``): ``train.lr``,
  ``train.lr_decay_step``, ``train.lr_decay_gamma``; e.g. a decay from epoch 93 on, on a run checkpointed
  after epoch 92, is the schedule the whole run then followed;
* may not change: the model, any of its parameters, and every other trainer setting (``seed``,
  ``batch_size``, ``optimizer``, ``weight_decay``, ``grad_clip``, ``ema_decay``, ``max_len``,
  ``val_metric``, ``eval_every``, ``eval_batch_size``, ``val_sampler``, ``val_sampler_steps``): they
  would pair the checkpoint's best validation score with a test score of another experiment.

Refused changes are reported together in one :class:`ConfigError` naming each field with its old and new
value. Allowed changes are returned, for ``run.json`` and ``metrics.json`` to record
(``resumes: [{"after_epoch": N, "changed": {"train.patience": [5, 15]}}]``) beside the new ``config.yaml``.
"""
from __future__ import annotations

import math
from typing import Any

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.errors import ConfigError
from dreamrec.models.registry import get_model_class
from dreamrec.train.trainer import epoch_lr

FREE = frozenset({"epochs", "patience", "max_minutes", "threads", "device", "precision", "compile"})
SCHEDULE = frozenset({"lr", "lr_decay_step", "lr_decay_gamma"})


def resolved_params(config: RunConfig) -> dict[str, Any]:
    """The model's parameters with every default filled in (an older config.yaml may lack newer fields)."""
    try:
        return get_model_class(config.model).Config(**config.params).model_dump(mode="json")
    except ConfigError:
        raise
    except Exception as e:  # pydantic validation
        raise ConfigError(f"bad parameters for model {config.model!r}: {e}") from None


def _first_changed_epoch(old: TrainConfig, new: TrainConfig, trained: int) -> int | None:
    for e in range(1, trained + 1):
        if not math.isclose(epoch_lr(old, e), epoch_lr(new, e), rel_tol=1e-12, abs_tol=0.0):
            return e
    return None


def resume_changes(old: RunConfig, new: RunConfig, trained_epochs: int, where: str = "the run") -> dict[str, list[Any]]:
    """The allowed changes ``{"train.patience": [old, new], ...}`` from ``old`` (the run's resolved config)
    to ``new`` for a run whose checkpoint has ``trained_epochs`` epochs; :class:`ConfigError` listing every
    refused change otherwise (see the module docstring)."""
    refused: list[str] = []
    allowed: dict[str, list[Any]] = {}
    if old.model != new.model:
        refused.append(f"model: {old.model!r} -> {new.model!r}")
    else:
        a, b = resolved_params(old), resolved_params(new)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                refused.append(f"params.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    a, b = old.train.model_dump(mode="json"), new.train.model_dump(mode="json")
    schedule_changed = [k for k in a if k in SCHEDULE and a[k] != b[k]]
    epoch = _first_changed_epoch(old.train, new.train, trained_epochs) if schedule_changed else None
    for k in a:  # the config's field order
        if a[k] == b[k]:
            continue
        if k in FREE or (k in SCHEDULE and epoch is None):
            allowed[f"train.{k}"] = [a[k], b[k]]
        elif k in SCHEDULE:
            refused.append(
                f"train.{k}: {a[k]!r} -> {b[k]!r} (changes the learning rate of epoch {epoch}, already trained)"
            )
        else:
            refused.append(f"train.{k}: {a[k]!r} -> {b[k]!r}")
    if refused:
        raise ConfigError(
            f"{where}: --resume refuses settings that differ from the run's: {'; '.join(refused)}. Resume with the "
            "run's settings (its config.yaml), or train a new run under another --out"
        )
    return allowed
