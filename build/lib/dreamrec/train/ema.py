"""An exponential moving average of a model's weights (Polyak averaging), as diffusion models train.

DDPM (Ho et al. 2020, Appendix B) and DiT evaluate and sample with an average of the weights
over the training steps rather than the last step's weights. After optimiser step ``n``::

    d_n = min(decay, (1 + n) / (10 + n))          # warm-up: early averages forget the random init
    theta_bar <- d_n * theta_bar + (1 - d_n) * theta

(the warm-up is the ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``). The
trainer validates, selects and saves the averaged weights; the optimiser keeps stepping the raw
ones. Only trainable floating-point parameters are averaged; buffers (e.g. popularity counts) are
the model's own.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from dreamrec.train.checkpoint import check_tensors


class WeightAverage:
    """The running average ``theta_bar`` of ``model``'s trainable parameters (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    def rate(self, n: int) -> float:
        """``d_n``, the weight on the old average at update ``n`` (1-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters in; call after every optimiser step."""
        self.updates += 1
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.rate(self.updates))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds ``theta_bar``; its own weights come back afterwards."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    p.copy_(o)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``theta_bar`` by parameter name (CPU, contiguous), for a checkpoint."""
        return {n: s.detach().to("cpu").contiguous() for n, s in zip(self.names, self.shadow)}

    def load(self, tensors: dict[str, torch.Tensor], updates: int, source: str = "average") -> None:
        """Restore what :meth:`tensors` wrote after ``updates`` updates."""
        check_tensors(dict(zip(self.names, self.shadow)), tensors, source, what="weight average tensors")
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                s.copy_(tensors[n])
        self.updates = int(updates)
