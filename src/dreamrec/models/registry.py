"""Name -> model class. Add a model by importing it here."""
from __future__ import annotations

from typing import Any

from dreamrec.errors import ConfigError
from dreamrec.models.base import SequentialRecommender
from dreamrec.models.caser import Caser
from dreamrec.models.cl4srec import CL4SRec
from dreamrec.models.ddrm import DDRM
from dreamrec.models.diffrec import DiffRec
from dreamrec.models.diffrec2 import DiffRec2
from dreamrec.models.diffurec import DiffuRec
from dreamrec.models.diffurecsys import DiffuRecSys
from dreamrec.models.dimerec import DimeRec
from dreamrec.models.diqdiff import DiQDiff
from dreamrec.models.dreamrec import DreamRec
from dreamrec.models.gru4rec import GRU4Rec
from dreamrec.models.idreamrec import IDreamRec
from dreamrec.models.popularity import Popularity
from dreamrec.models.sasrec import SASRec

MODELS: dict[str, type[SequentialRecommender]] = {
    cls.name: cls for cls in (Popularity, SASRec, GRU4Rec, Caser, CL4SRec, DreamRec, DiffuRec, DiffuRecSys, IDreamRec, DiffRec, DiQDiff, DimeRec, DiffRec2, DDRM)
}


def get_model_class(name: str) -> type[SequentialRecommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, n_items: int, max_len: int, params: dict[str, Any] | None = None) -> SequentialRecommender:
    cls = get_model_class(name)
    try:
        config = cls.Config(**(params or {}))
    except Exception as e:  # pydantic.ValidationError
        raise ConfigError(f"bad parameters for model {name!r}: {e}") from e
    return cls(n_items, max_len, config)
