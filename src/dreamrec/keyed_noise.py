"""Keyed Gaussian noise: inference draws that depend on a row's own key, never on its batch.

A generated recommendation is a function of the request alone: a diffusion model's
answer used to depend on where a history sat in a batch, because every row consumed torch's
global generator in turn. Inside :func:`keyed_rows`, :func:`randn` / :func:`randn_like` instead
return, for row ``r`` of the batch, call number ``c`` of the context and pair ``p`` of the row's elements,

    ``(z_2p, z_2p+1) = sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2)``  (Box & Muller 1958),

with ``u1, u2`` two 24-bit fields (float32-exact, tails to 5.9 sd) of a counter-based hash
``H(key_r, c, p)`` (Salmon et al.
2011, "Parallel random numbers: as easy as 1, 2, 3": noise as a pure function of a key and a
counter). ``H`` chains the SplitMix64 finaliser (Steele, Lea & Flood 2014; Stafford's "variant 13"
constants), written in wrapping int64 torch ops with masked (logical) right shifts, so it is
vectorised over ``[rows, pairs]`` blocks (sized to stay in cache) and runs on any device.

Outside the context both functions are plain ``torch.randn``/``torch.randn_like`` on the global
generator: training (and the bit-exact resume of a run) is unchanged.

Rows are keyed by :func:`row_keys` (a hash of the run's seed, the row's internal history ids
without padding, and its intent text). A draw whose leading size is ``m * B`` for ``B`` keyed rows
is read in torch ``repeat`` layout (copy ``j`` of row ``i`` at index ``j * B + i``, as DreamRec's
``draws`` and DiffuRec's ``n_seeds`` stack their copies), each copy with its own sub-key; any other
leading size is an error. This module imports nothing from dreamrec: every layer may use it.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["keyed_rows", "randn", "randn_like", "row_keys", "active"]


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GAMMA = _i64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2^64 / golden ratio)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)
_LOW24 = (1 << 24) - 1
_BLOCK = 1 << 15  # hashes per block


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser: a bijection of the 64 bits with full avalanche (wrapping int64).
    Returns a new tensor (``z`` is not modified), computed in place with one temporary."""
    t = z >> 30
    t &= (1 << 34) - 1
    t ^= z
    t *= _M1
    u = t >> 27
    u &= (1 << 37) - 1
    t ^= u
    t *= _M2
    torch.bitwise_right_shift(t, 31, out=u)
    u &= (1 << 33) - 1
    t ^= u
    return t


def _mix_int(x: int) -> int:
    return int(_mix(torch.tensor([_i64(x & (2**64 - 1))], dtype=torch.int64))[0])


class _Context:
    def __init__(self, keys: torch.Tensor):
        self.keys = keys
        self.calls = 0
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def keys_on(self, device: torch.device) -> torch.Tensor:
        k = self._by_device.get(device)
        if k is None:
            k = self._by_device[device] = self.keys.to(device)
        return k


_local = threading.local()


def active() -> bool:
    """True inside :func:`keyed_rows` (on this thread)."""
    return getattr(_local, "ctx", None) is not None


@contextmanager
def keyed_rows(keys: torch.Tensor) -> Iterator[None]:
    """Within the body (on this thread), :func:`randn`/:func:`randn_like` draw row ``i``'s noise
    from ``keys[i]`` (int64 ``[B]``) and a per-context call counter. Contexts nest (the inner wins)."""
    keys = torch.as_tensor(keys)
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise ValueError(f"keys must be a 1-D int64 tensor, got {keys.dtype} {tuple(keys.shape)}")
    previous = getattr(_local, "ctx", None)
    _local.ctx = _Context(keys)
    try:
        yield
    finally:
        _local.ctx = previous


def row_keys(seed: int, history: torch.Tensor, intents: Sequence[str | None] | None = None) -> torch.Tensor:
    """int64 ``[B]``: one key per row of ``history`` (``[B, L]`` internal ids, 0 = padding), a hash of
    ``seed``, the row's non-padding ids in order (so the padding width does not matter) and its
    intent (None or blank = none; hashed as UTF-8 with ``surrogatepass``, so any string works)."""
    h = history.detach().to("cpu", torch.int64)
    k = torch.full((h.shape[0],), _mix_int(int(seed) * 2 + 1), dtype=torch.int64)
    for col in range(h.shape[1]):
        v = h[:, col]
        k = torch.where(v > 0, _mix((k ^ v) + _GAMMA), k)
    if intents is not None:
        if len(intents) != h.shape[0]:
            raise ValueError(f"got {len(intents)} intents for {h.shape[0]} rows")
        for i, text in enumerate(intents):
            if text is not None and str(text).strip():
                digest = hashlib.blake2b(str(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
                k[i] = int(_mix(k[i : i + 1] ^ int.from_bytes(digest, "little", signed=True))[0])
    return k


def _keyed_normal(ctx: _Context, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    keys = ctx.keys_on(device)
    B = keys.shape[0]
    if not shape or B == 0 or shape[0] % B != 0:
        raise RuntimeError(
            f"keyed noise: a draw of shape {tuple(shape)} inside keyed_rows over {B} rows; its leading size "
            f"must be a multiple of the number of rows (copies of the batch stacked in torch 'repeat' layout)"
        )
    copies = shape[0] // B
    per_row = math.prod(shape[1:])
    rows = keys.repeat(copies)  # row j * B + i is copy j of row i
    if copies > 1:  # copy 0 keeps the row's key (a single draw equals the first of several)
        j = torch.arange(copies, device=device, dtype=torch.int64).repeat_interleave(B)
        rows = torch.where(j > 0, _mix(rows ^ _mix(j * _GAMMA)), rows)
    ctx.calls += 1
    call = _mix(torch.tensor([ctx.calls], device=device, dtype=torch.int64) * _GAMMA)
    base = _mix(rows ^ call)  # [rows]: the row's stream for this call
    pairs = (per_row + 1) // 2  # one 64-bit hash gives two normals (Box-Muller's cos and sin)
    p = torch.arange(1, pairs + 1, device=device, dtype=torch.int64) * _GAMMA
    out = torch.empty(shape[0], 2 * pairs, device=device, dtype=torch.float32)
    # CPU: blocks of rows whose temporaries stay in cache (at least 8 rows each); other devices: one block
    step = max(8, _BLOCK // pairs) if device.type == "cpu" else shape[0]
    for r0 in range(0, shape[0], step):
        z = _mix(base[r0 : r0 + step, None] + p[None, :])  # [rows, pairs]: one hash per pair
        u1 = _shr(z, 40).float().add_(0.5).mul_(2.0**-24)  # bits 40-63, in (0, 1): the log is finite
        z >>= 16
        z &= _LOW24
        theta = z.float().add_(0.5).mul_(2.0 * math.pi * 2.0**-24)  # bits 16-39
        radius = u1.log_().mul_(-2.0).sqrt_()
        block = out[r0 : r0 + step].view(-1, pairs, 2)
        torch.mul(radius, theta.cos(), out=block[..., 0])
        torch.mul(radius, theta.sin_(), out=block[..., 1])
    return out[:, :per_row].to(dtype).reshape(shape)


def randn(
    shape: Sequence[int] | torch.Size, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``N(0, I)`` of ``shape``: keyed per row inside :func:`keyed_rows`, else ``torch.randn``."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _keyed_normal(ctx, tuple(int(s) for s in shape), dev, dtype or torch.get_default_dtype())


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """``N(0, I)`` shaped like ``x`` (its device and dtype): keyed inside :func:`keyed_rows`, else
    ``torch.randn_like``."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        return torch.randn_like(x)
    return _keyed_normal(ctx, tuple(x.shape), x.device, x.dtype)
