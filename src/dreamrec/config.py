"""Typed configuration (pydantic), loaded from YAML, with ``key=value`` overrides."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamrec.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareConfig(_Strict):
    """How an interaction log becomes a prepared dataset."""

    protocol: Literal["dreamrec", "loo"] = "loo"
    min_item_count: int = Field(5, ge=1, description="k-core: keep items with at least this many interactions")
    min_seq_len: int = Field(3, ge=1, description="k-core: keep users with at least this many interactions")
    max_len: int | None = Field(None, ge=1, description="history window; default 10 (dreamrec) or 50 (loo)")
    dedupe: bool = True
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def window(self) -> int:
        if self.max_len is not None:
            return self.max_len
        return 10 if self.protocol == "dreamrec" else 50


class TrainConfig(_Strict):
    """Optimisation and model selection, shared by every trainable model."""

    epochs: int = Field(200, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr_decay_step: int | None = Field(
        None, ge=1, description="step decay: the learning rate is multiplied by lr_decay_gamma after every "
        "lr_decay_step epochs (epoch e trains at lr * gamma ** ((e - 1) // step); torch's StepLR stepped once "
        "per epoch, as the DiffuRec authors' code with step 100). None = a constant learning rate"
    )
    lr_decay_gamma: float = Field(0.1, gt=0, le=1, description="the factor of each lr_decay_step decay")
    patience: int = Field(10, ge=1, description="epochs without validation improvement before stopping")
    val_metric: str = "NDCG@20"
    exclude_seen: bool = Field(
        False, description="validation and test rank without the items of each row's history (DiffRec's protocol); "
        "the default ranks every item, as the other papers here")
    eval_every: int = Field(1, ge=1)
    eval_offset: int = Field(
        0, ge=0, description="validate after the epochs e > eval_offset with (e - eval_offset) % eval_every == 0 (and "
        "the last); 1 with eval_every 20 = epochs 21, 41, ... as the DiffuRec code (trainer.py:112, 0-based "
        "epoch_temp != 0 and epoch_temp % 20 == 0)"
    )
    select: Literal["best", "any_improved"] = Field(
        "best", description="which validated epoch is kept: best = the highest val_metric (early stopping counts "
        "epochs since it); any_improved = the last validation at which any of select_metrics beat its own best so "
        "far (the DiffuRec and DiffuRecSys code, trainer.py:128-145; patience counts epochs since that validation)"
    )
    select_metrics: list[str] = Field(
        default_factory=lambda: ["HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"],
        description="the metrics of select: any_improved",
    )
    eval_batch_size: int = Field(1024, ge=1)
    val_sampler: Literal["ddpm", "ddim", "onestep"] | None = Field(
        None, description="diffusion models: the sampler of the validation runs during training (e.g. a few DDIM "
        "steps, to select epochs cheaply); None = the model's own. Test and saved model keep the model's sampler"
    )
    val_sampler_steps: int | None = Field(None, ge=1, description="S for val_sampler (None = all T)")
    max_len: int | None = Field(None, ge=1, description="history window seen by the model; default the dataset's")
    grad_clip: float | None = Field(5.0, gt=0)
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights with this decay (e.g. "
        "0.999; warm-up min(decay, (1 + n) / (10 + n)) at step n, as diffusion models train) and validate, select "
        "and save the average instead of the last step's weights. None = no average"
    )
    seed: int = 42
    init_from: str | None = Field(
        None, description="a finished run directory whose weights start this run: every tensor of the same name and "
        "shape is copied (a SASRec run gives DDRM its trained backbone), the rest keeps its initialisation; the "
        "item catalogs must be equal (dreamrec.train.warm_start)"
    )
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default this process's share of "
                                "the cores (dreamrec.threads: all of them for one process, cores // processes under "
                                "torchrun); say 1 when two jobs share a machine")
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget of this training call, validations included (the test "
        "evaluation after it is timed separately): no epoch starts that would not end, with its validation, "
        "inside it (judged by the slowest epoch so far), an epoch that the budget ends midway is dropped, and the "
        "best validated weights are kept, as early stopping does; every call trains at least one epoch, so only "
        "the first epoch of a call can overrun it. A resumed run gets a new budget"
    )
    health_checks: bool = Field(
        True, description="compare every validation with the popularity ranking's and watch the item table for "
        "collapse (dreamrec.train.health); findings go to log.jsonl and metrics.json's warnings"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the training forward pass and loss under bfloat16 autocast (weights, optimiser "
        "and evaluation stay float32); for GPUs: on a CPU without bfloat16 instructions it is several times slower "
        "than fp32"
    )
    compile: bool = Field(
        False, description="compile the training loss with torch.compile (fewer, fused kernels: for GPU jobs bound "
        "by launching many small kernels); the same model and loss, other random draws; falls back to eager "
        "with a warning where compilation fails"
    )


class RunConfig(_Strict):
    """Everything a training run needs; saved resolved in the run directory."""

    model: str
    params: dict[str, Any] = Field(default_factory=dict, description="the model's own hyperparameters")
    train: TrainConfig = Field(default_factory=TrainConfig)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalars/lists (``0.1``, ``true``, ``[1,2]``) else the raw string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_settings(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """Flat ``key=value`` settings (values by :func:`parse_value`), e.g. DiffuASR's ``--set M=10``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (new dict returned).

    ``model=...`` sets the model name, ``train.*`` the trainer and anything else under
    ``params`` (``hidden=64`` and ``params.hidden=64`` are the same).
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in ("model", "train", "params"):
            parts = ["params", *parts]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = parse_value(value)
    return out


def nearest_key(key: str, candidates: Iterable[str]) -> str | None:
    """The valid key a mistyped ``key`` most likely meant: the same last segment in another section
    (``lr`` -> ``train.lr``), else the closest spelling (``hiden`` -> ``hidden``), else None."""
    candidates = [c for c in candidates if c != key]
    last = key.rsplit(".", 1)[-1]
    same_name = [c for c in candidates if c.rsplit(".", 1)[-1] == last]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # compare the last segments, e.g. train.lrate -> train.lr
        by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)]
    return close[0] if close else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(err: ValidationError, source: str, *, prefix: str = "", keys: Iterable[str] = ()) -> str:
    """One line for a pydantic error: each problem as ``field=value: what is wrong``, an unknown
    field with the nearest valid key among ``keys`` (full dotted names); no pydantic URL."""
    keys = list(keys)
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            hint = nearest_key(field, keys)
            parts.append(f"unknown setting {field}={_short(value)}" + (f" (did you mean {hint}?)" if hint else ""))
            continue
        msg = str(e["msg"])
        for lead in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(lead)
        if not loc or e["type"] in ("value_error", "assertion_error") and isinstance(value, dict):
            parts.append(f"{field + ': ' if field else ''}{msg}")  # a check across fields
        elif e["type"] == "missing":
            parts.append(f"{field} is required")
        else:
            parts.append(f"{field}={_short(value)}: {msg}")
    return f"{source}: " + "; ".join(parts)


def train_keys() -> list[str]:
    """The dotted names of every trainer setting (``train.lr``, ...)."""
    return [f"train.{name}" for name in TrainConfig.model_fields]


def build_run_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig(**data)
    except ValidationError as e:
        raise ConfigError(
            validation_message(e, source, keys=["model", "params", "train", *train_keys()])
        ) from None
