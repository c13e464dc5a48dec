"""Data-parallel training over processes started by ``torchrun`` (one process per GPU, or CPU processes).

    torchrun --nproc-per-node 4 -m dreamrec.cli train --model sasrec --data DATA --out RUN --set train.device=cuda

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` joins the process group
(NCCL for CUDA, Gloo for the CPU) and gives each process its GPU ``cuda:LOCAL_RANK``. Then:

* every process walks the same batch order (the batch generator is seeded with ``train.seed`` on all
  ranks) and trains on its own contiguous part of each batch (:func:`local_part`), so ``batch_size``
  stays the global batch; gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`.
  For a loss that is a mean over the batch's rows and parts of equal size this is the same gradient
  as one process on the whole batch;
* dropout and diffusion noise differ between ranks (torch is seeded with ``train.seed + rank``);
* validation and test rows are split between the ranks and their ranks gathered
  (:func:`gathered_ranks`), so every process sees the same metrics and takes the same early-stopping
  and time-budget decisions (:func:`any_rank`);
* only rank 0 writes (logs, checkpoints, the run directory); a resumed run restores rank 0's random
  state on every rank and then reseeds ranks above 0.

Without ``WORLD_SIZE > 1`` nothing here does anything: a single process trains as before.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dreamrec.data.batching import Batch
from dreamrec.data.dataset import SampleRows
from dreamrec.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def local_world(self) -> int:
        """Processes of this job on this machine (``LOCAL_WORLD_SIZE`` under torchrun), sharing its cores."""
        import os

        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The job as ``torchrun`` describes it in the environment (a single process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e})") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return Dist(rank=rank, world=world, local_rank=local)


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join the process group if ``torchrun`` started several processes (once per process) and
    return this process's :class:`Dist` and device (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    env = from_env()
    dev = torch.device(device)
    if not env.enabled:
        return env, dev
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # Leave the group before the interpreter exits: a gloo group torn down by exit alone can
        # abort a rank ("terminate called without an active exception") after its work is done.
        atexit.register(_leave_group)
    return env, dev


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Dist) -> None:
    if env.enabled:
        dist.barrier()


def any_rank(flag: bool, env: Dist) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not env.enabled:
        return flag
    t = _on_backend(torch.tensor([1.0 if flag else 0.0]))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, env: Dist) -> float:
    """The mean of a scalar over the ranks (every rank gets it)."""
    if not env.enabled:
        return value
    t = _on_backend(torch.tensor([float(value)], dtype=torch.float64))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / env.world


def _on_backend(t: torch.Tensor) -> torch.Tensor:
    """NCCL reduces CUDA tensors only; Gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def part_bounds(n: int, env: Dist) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous part of ``n`` rows (sizes differ by at most one)."""
    base, extra = divmod(n, env.world)
    start = env.rank * base + min(env.rank, extra)
    return start, start + base + (1 if env.rank < extra else 0)


def local_part(batch: Batch, env: Dist) -> Batch:
    """This rank's rows of a global batch."""
    if not env.enabled:
        return batch
    s, e = part_bounds(len(batch.target), env)
    labels = None if batch.labels is None else batch.labels[s:e]
    return Batch(batch.history[s:e], batch.target[s:e], labels)


def local_rows(rows: SampleRows, env: Dist) -> SampleRows:
    """This rank's contiguous share of evaluation rows."""
    if not env.enabled:
        return rows
    s, e = part_bounds(len(rows), env)
    return SampleRows(rows.history[s:e], rows.target[s:e], rows.user[s:e])


def evaluate_sharded(model: torch.nn.Module, rows: SampleRows, env: Dist, *, ks, **kwargs) -> dict[str, float]:
    """:func:`~dreamrec.eval.evaluate.evaluate` with the rows split between the ranks: each ranks
    its share, the target ranks are gathered, and every rank returns the metrics of all rows."""
    from dreamrec.eval.evaluate import evaluate, rank_targets
    from dreamrec.eval.metrics import metrics_from_ranks

    if not env.enabled:
        return evaluate(model, rows, ks=ks, **kwargs)
    return metrics_from_ranks(gathered_ranks(rank_targets(model, local_rows(rows, env), **kwargs), env), ks)


def gathered_ranks(local: np.ndarray, env: Dist) -> np.ndarray:
    """Every rank's ``local`` array, concatenated in rank order (= the original row order)."""
    if not env.enabled:
        return local
    parts: list[np.ndarray | None] = [None] * env.world
    dist.all_gather_object(parts, local)
    return np.concatenate([p for p in parts if p is not None])
