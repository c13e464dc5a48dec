"""Pickle-free persistence of weights and resumable training state.

Everything is written as safetensors (tensors) or JSON (everything else); nothing here calls
``torch.save``/``torch.load``, so loading a run directory never executes code.

Layout of a checkpoint directory (``<run>/checkpoint/``)::

    state.json            # the commit point: scalars + the name of the live tensor folder
    <tag>/model.safetensors
    <tag>/optimizer.safetensors
    <tag>/rng.safetensors
    <tag>/best.safetensors  # the weights of the best validated epoch so far (if any)
    <tag>/average.safetensors  # the running weight average, when training keeps one (train.ema_decay)

A new checkpoint is written into a fresh ``<tag>`` folder, then ``state.json`` is replaced
atomically (``os.replace``) to point at it, then older folders are deleted. A crash at any point
leaves either the previous or the new checkpoint readable, never a mix. The best weights travel
inside the checkpoint, so they always belong to the committed state; the trainer writes the run's
``model.safetensors`` only when training has finished.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamrec.atomic import atomic_write, give_default_mode
from dreamrec.errors import ArtifactError

STATE_FILE = "state.json"
BEST_FILE = "best.safetensors"
AVERAGE_FILE = "average.safetensors"
CHECKPOINT_FORMAT = 1


# ---- atomic file helpers ------------------------------------------------------------------
def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(Path(path), write)


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` to a temp file in the same directory, then ``os.replace``."""
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


# ---- model weights ------------------------------------------------------------------------
def _unique_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict without aliased entries, alias name -> kept name).

    Tied parameters appear several times in ``state_dict`` sharing storage; safetensors refuses
    shared tensors, so only the first name of each is stored.
    """
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t.detach().to("cpu").contiguous()
    return kept, aliases


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as a safetensors-ready dict (CPU, contiguous, no aliases)."""
    return _unique_state(model)[0]


def check_tensors(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str, what: str = "weights",
    aliases: Iterable[str] = (),
) -> None:
    """Raise :class:`ArtifactError` naming the problem unless ``tensors`` has exactly ``expected``'s names
    (``aliases`` may also appear) with their shapes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - set(aliases))
    if missing or unexpected:
        raise ArtifactError(
            f"{source}: {what} do not match the model (missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    for name, t in tensors.items():
        if name in expected and tuple(t.shape) != tuple(expected[name].shape):
            raise ArtifactError(
                f"{source}: {name} has shape {tuple(t.shape)}, the model expects {tuple(expected[name].shape)}"
            )


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``tensors`` (as produced by :func:`model_tensors`) into ``model``, strictly."""
    expected, aliases = _unique_state(model)
    check_tensors(expected, tensors, source, aliases=aliases)
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False)


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights to ``path`` (safetensors, atomically)."""
    path = Path(path)
    atomic_save_tensors(path, model_tensors(model), metadata)
    return path


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors weights from ``path`` into ``model`` (``safetensors.torch.load_file``)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    load_model_tensors(model, load_file(str(path)), str(path))
    return model


# ---- optimizer state ----------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def optimizer_to_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<param>.<key>``) and JSON scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = _json_value(v)
    groups = [{k: _json_value(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def optimizer_from_parts(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` from :func:`optimizer_to_parts` output."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for pid, st in meta.get("state_scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---- RNG state ----------------------------------------------------------------------------
def rng_tensors() -> dict[str, torch.Tensor]:
    """Torch's global CPU (and, if present, CUDA) generator states as uint8 tensors."""
    out = {"torch_cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda.{i}"] = s.cpu()
    return out


def restore_rng_tensors(tensors: dict[str, torch.Tensor]) -> None:
    torch.random.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---- full checkpoints ---------------------------------------------------------------------
def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rng: np.random.Generator,
    *,
    best_is_current: bool = False,
    best: dict[str, torch.Tensor] | None = None,
    average: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a resumable checkpoint into ``directory`` atomically (see the module docstring).

    ``best_is_current``: this epoch's weights are the new best (``best.safetensors``): ``best`` when
    given (the validated weights, e.g. a weight average, as :func:`model_tensors` lays them out), else
    the model's current weights; otherwise the previous checkpoint's best weights, if any, are
    carried over. ``average``: a running weight average to keep beside them (``average.safetensors``).

    ``state`` holds the trainer's JSON-serialisable scalars (epoch, best metric, history, ...);
    the optimizer's param groups and the NumPy generator's ``bit_generator.state`` are added.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous_best = best_weights_path(directory)
    tag = f"epoch-{int(state.get('epoch', 0)):05d}-{uuid.uuid4().hex[:8]}"
    sub = directory / f".{tag}.tmp"
    sub.mkdir()
    try:
        save_file(model_tensors(model), str(sub / "model.safetensors"))
        opt_tensors, opt_meta = optimizer_to_parts(optimizer)
        save_file(opt_tensors, str(sub / "optimizer.safetensors"))
        save_file(rng_tensors(), str(sub / "rng.safetensors"))
        if average is not None:
            save_file(average, str(sub / AVERAGE_FILE))
        if best_is_current and best is not None:
            save_file(best, str(sub / BEST_FILE))
        elif best_is_current:
            _link_or_copy(sub / "model.safetensors", sub / BEST_FILE)
        elif previous_best is not None:
            _link_or_copy(previous_best, sub / BEST_FILE)
        for f in sub.iterdir():  # safetensors writes 0600: give the files the umask's mode
            give_default_mode(f)
        os.replace(sub, directory / tag)
    except BaseException:
        shutil.rmtree(sub, ignore_errors=True)
        raise
    doc = {
        "format": CHECKPOINT_FORMAT,
        "tensors": tag,
        "state": state,
        "optimizer": opt_meta,
        "numpy_rng": rng.bit_generator.state,
    }
    atomic_write_json(directory / STATE_FILE, doc)  # the commit point
    for p in directory.iterdir():
        if p.is_dir() and p.name != tag:
            shutil.rmtree(p, ignore_errors=True)
    return directory


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _committed_file(directory: str | Path, name: str) -> Path | None:
    """``<tag>/<name>`` of the committed checkpoint in ``directory``, or None (no checkpoint, or no such file)."""
    state_file = Path(directory) / STATE_FILE
    if not state_file.is_file():
        return None
    try:
        tag = json.loads(state_file.read_text())["tensors"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{state_file}: corrupt checkpoint state ({e})") from None
    path = Path(directory) / tag / name
    return path if path.is_file() else None


def best_weights_path(directory: str | Path) -> Path | None:
    """The committed checkpoint's best weights (``<tag>/best.safetensors``), or None."""
    return _committed_file(directory, BEST_FILE)


def load_average(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The committed checkpoint's weight average (``<tag>/average.safetensors``), or None without one."""
    path = _committed_file(directory, AVERAGE_FILE)
    return load_file(str(path)) if path is not None else None


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def _read_state_doc(directory: Path) -> dict[str, Any]:
    state_file = directory / STATE_FILE
    try:
        doc = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no checkpoint ({STATE_FILE} missing)") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{state_file}: corrupt checkpoint state ({e})") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{state_file}: corrupt checkpoint state (not a JSON object)")
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{state_file}: unsupported checkpoint format {doc.get('format')!r}")
    return doc


def checkpoint_state(directory: str | Path) -> dict[str, Any] | None:
    """The trainer's ``state`` of the committed checkpoint in ``directory`` (epoch, history, ...), read
    without loading any tensor; None without a checkpoint."""
    directory = Path(directory)
    if not has_checkpoint(directory):
        return None
    return _read_state_doc(directory)["state"]


def check_checkpoint(directory: str | Path, model: torch.nn.Module) -> None:
    """Raise :class:`ArtifactError` unless the committed checkpoint in ``directory`` is readable and its weights
    have ``model``'s names and shapes; reads the safetensors headers only (nothing is loaded)."""
    directory = Path(directory)
    doc = _read_state_doc(directory)
    path = directory / str(doc.get("tensors")) / "model.safetensors"
    if not path.is_file():
        raise ArtifactError(f"{directory}: checkpoint is incomplete ({path} missing)")
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # a truncated or corrupt header
        raise ArtifactError(f"{path}: unreadable weights ({e})") from None
    expected, aliases = _unique_state(model)
    check_tensors(expected, shapes, str(path), aliases=aliases)


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    rng: np.random.Generator | None = None,
    restore_torch_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer's ``state`` dict.

    The model weights and (if given) the optimizer state, the NumPy generator's state and
    torch's global RNG are restored in place.
    """
    directory = Path(directory)
    doc = _read_state_doc(directory)
    sub = directory / doc["tensors"]
    try:
        load_model_tensors(model, load_file(str(sub / "model.safetensors")), str(sub / "model.safetensors"))
        if optimizer is not None:
            opt_sd = optimizer_from_parts(load_file(str(sub / "optimizer.safetensors")), doc["optimizer"])
            optimizer.load_state_dict(opt_sd)
        if restore_torch_rng:
            restore_rng_tensors(load_file(str(sub / "rng.safetensors")))
    except FileNotFoundError as e:
        raise ArtifactError(f"{sub}: checkpoint is incomplete ({e.filename} missing)") from None
    if rng is not None:
        rng.bit_generator.state = doc["numpy_rng"]
    return doc["state"]
