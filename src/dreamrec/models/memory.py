"""How much memory a model's weights take, known from its config before anything is allocated.

:func:`model_footprint` builds the model on PyTorch's ``meta`` device (shapes and dtypes, no storage), so a
config such as ``hidden: 50000000`` is measured in microseconds instead of being allocated.
:func:`check_model_memory` turns that into a clear :class:`~dreamrec.errors.ConfigError` when the weights,
times the copies the caller needs at once, exceed the limit: ``DREAMREC_MAX_MEMORY_GB`` when set, else
this machine's physical memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from dreamrec.errors import ConfigError
from dreamrec.models.registry import build_model, get_model_class

LIMIT_ENV = "DREAMREC_MAX_MEMORY_GB"
GB = 2**30


META_FROM = 2**20  # tensors of at least this many values are created on the meta device

# the factories that take the tensor's size as their first argument(s)
_SIZED_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided}


def _requested_numel(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    size = kwargs.get("size", args[0] if args else None)
    if isinstance(size, int):
        size = [a for a in args if isinstance(a, int)] if args and isinstance(args[0], int) else [size]
    if not isinstance(size, (tuple, list, torch.Size)) or not all(isinstance(d, int) for d in size):
        return None
    n = 1
    for d in size:
        n *= d
    return n


class _LargeOnMeta(TorchFunctionMode):
    """Create tensors of at least :data:`META_FROM` values on the meta device when no device is asked for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func in _SIZED_FACTORIES and kwargs.get("device") is None:
            n = _requested_numel(args, kwargs)
            if n is not None and n >= META_FROM:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Footprint:
    n_values: int  # parameters and buffers
    n_bytes: int
    largest: str  # name of the largest tensor
    largest_shape: tuple[int, ...]


def model_footprint(name: str, n_items: int, max_len: int, params: dict[str, Any] | None = None) -> Footprint | None:
    """The weights' size of model ``name`` built with these arguments, measured on the meta device;
    None for a model that cannot be built there (its size is then unknown). Bad parameters raise
    :class:`ConfigError` as :func:`build_model` does."""
    get_model_class(name)  # an unknown name is the caller's error, not an unknown size
    try:
        with _LargeOnMeta():
            model = build_model(name, n_items, max_len, params)
    except ConfigError:
        raise
    except Exception:  # a constructor that computes with a large tensor's data: no estimate
        return None
    seen: set[int] = set()
    tensors = []
    for tname, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            tensors.append((tname, t))
    if not tensors:
        return Footprint(0, 0, "", ())
    sizes = [(t.numel() * t.element_size(), tname, tuple(t.shape)) for tname, t in tensors]
    largest = max(sizes)
    return Footprint(sum(t.numel() for _, t in tensors), sum(s[0] for s in sizes), largest[1], largest[2])


def memory_limit() -> tuple[int | None, str]:
    """(limit in bytes or None when unknown, where it comes from)."""
    text = os.environ.get(LIMIT_ENV)
    if text:
        try:
            return int(float(text) * GB), f"{LIMIT_ENV}={text}"
        except ValueError:
            raise ConfigError(f"{LIMIT_ENV}={text!r}: expected a number of GB") from None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, "unknown"
    return total, f"this machine's memory; set {LIMIT_ENV} to change it"


def _culprits(shape: tuple[int, ...], params: dict[str, Any], n_items: int, max_len: int) -> list[str]:
    """The config fields whose values appear among ``shape``'s dimensions."""
    dims = set(shape)
    out = [f"params.{k}={v}" for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool) and v in dims]
    if n_items in dims or n_items + 1 in dims:
        out.append(f"the catalog's {n_items} items")
    if max_len in dims:
        out.append(f"train.max_len={max_len}")
    return out


def check_model_memory(
    name: str, n_items: int, max_len: int, params: dict[str, Any] | None, *, copies: int, purpose: str,
    source: str = "config",
) -> Footprint | None:
    """Raise :class:`ConfigError` before allocation if ``copies`` copies of the model's weights (e.g. 4 to
    train with Adam: weights, gradients, two moments) exceed :func:`memory_limit`; returns the footprint."""
    footprint = model_footprint(name, n_items, max_len, params)
    limit, why = memory_limit()
    if footprint is None or limit is None or footprint.n_bytes * copies <= limit:
        return footprint
    fields = _culprits(footprint.largest_shape, params or {}, n_items, max_len)
    cause = " and ".join(fields) if fields else "its parameters"
    raise ConfigError(
        f"{source}: {cause} make{'s' if len(fields) == 1 else ''} model {name!r} need about "
        f"{_gb(footprint.n_bytes * copies)} to {purpose} ({copies} x {_gb(footprint.n_bytes)} of weights, "
        f"{footprint.n_values:,} values; the largest, {footprint.largest}, is {list(footprint.largest_shape)}), "
        f"over the limit of {_gb(limit)} ({why})"
    )


def _gb(n: int) -> str:
    x = n / GB
    return f"{x:,.1f} GB" if x >= 0.1 else f"{x:.2g} GB"
