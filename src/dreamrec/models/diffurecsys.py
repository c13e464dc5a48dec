"""DiffuRecSys (Zolghadr et al., 2024) as its code runs (github.com/shararezr/DiffuRecSys at ``746866d``).

DiffuRec's diffusion and training (:mod:`dreamrec.models.diffurec`) with the approximator of the
DiffuRecSys code (:class:`~dreamrec.nn.diffurecsys.DiffuRecSysApproximator`: a linear
cross-attention of ``lambda ⊙ (x_t + d_t)`` over the history inside every block, all blocks fed the
same input so only the last counts), plus the code's DiffuRec details: a learned padding row, the
padding column in the softmax, LayerNorm ``eps = 1e-12`` and ``beta_t`` as the reverse variance.

Offset noise (the paper's Eq. 17) is ``offset_noise = 0.1, offset_mode = element``: the training noise
``randn + 0.1 randn`` of the code's commit ``9037d2b`` (``diffurec.py:582``; removed again at HEAD).

The paper's text describes a different network (Eq. 16, standard softmax cross-attention, chained
blocks, d = 128); that reading is ``diffurec`` with ``cross_attention: true``.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import nn

from dreamrec.diffusion.scheduler import ReverseVariance
from dreamrec.errors import ConfigError
from dreamrec.models.base import ModelConfig
from dreamrec.models.diffurec import DiffuRec, DiffuRecConfig
from dreamrec.nn.diffurecsys import LAYER_NORM_EPS, DiffuRecSysApproximator
from dreamrec.nn.official_layers import GeluKind, InitKind


class DiffuRecSysConfig(DiffuRecConfig):
    # the code's main.py defaults (hidden 256; the paper's text says 128)
    hidden: int = Field(256, ge=1, description="embedding size d (the code: 256)")
    official_padding: bool = Field(True, description="the code's padding: always on for diffurecsys")
    layer_norm_eps: float = Field(LAYER_NORM_EPS, gt=0, description="LayerNorm eps of the item representations")
    reverse_variance: ReverseVariance = "beta"
    offset_mode: Literal["row", "element"] = "element"
    trim_padding: bool | Literal["auto"] = Field(False, description="not exact for this model: must stay off")
    # fixed by the code's approximator (kept so a config cannot silently ask for something else)
    gelu: GeluKind = "tanh"
    init: InitKind = "xavier"


class DiffuRecSys(DiffuRec):
    name: ClassVar[str] = "diffurecsys"
    Config: ClassVar[type[ModelConfig]] = DiffuRecSysConfig
    config: DiffuRecSysConfig

    def build_approximator(self, config: DiffuRecConfig) -> nn.Module:
        fixed = {
            "official_padding": (config.official_padding, True),
            "cross_attention": (config.cross_attention, False),
            "block_dropout": (config.block_dropout, False),
            "trim_padding": (config.trim_padding, False),
            "position_embedding": (config.position_embedding, False),
            "gelu": (config.gelu, "tanh"),
            "init": (config.init, "xavier"),
        }
        for key, (value, required) in fixed.items():
            if value != required:
                raise ConfigError(
                    f"model 'diffurecsys': {key} must be {required!r} (the DiffuRecSys code's approximator); "
                    f"got {value!r}. Our own variants are model 'diffurec' (e.g. cross_attention: true)"
                )
        try:
            return DiffuRecSysApproximator(
                config.hidden, n_blocks=config.n_blocks, n_heads=config.n_heads, dropout=config.dropout,
                delta=config.delta, num_train_timesteps=config.timesteps, rescale_timesteps=config.rescale_timesteps,
            )
        except ValueError as err:
            raise ConfigError(f"model 'diffurecsys': {err}") from None
