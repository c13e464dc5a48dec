"""Name -> model class. Add a model by importing it here."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dreamrec.config import train_keys, validation_message
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
from dreamrec.models.diqdiff import DiQDiff, DiQDiffAblation, ResHeadCEDiQDiff
from dreamrec.models.diqdiff_authors import DiQDiffAuthors
from dreamrec.models.dreamrec import DreamRec
from dreamrec.models.dreamrec_variants import DreamRecAblation, ResHeadCE, split_legacy_params
from dreamrec.models.gru4rec import GRU4Rec
from dreamrec.models.idreamrec import IDreamRec
from dreamrec.models.idreamrec_variants import IDreamRecResidual
from dreamrec.models.popularity import Popularity
from dreamrec.models.sasrec import SASRec

MODELS: dict[str, type[SequentialRecommender]] = {
    cls.name: cls
    for cls in (Popularity, SASRec, GRU4Rec, Caser, CL4SRec, DreamRec, DiffuRec, DiffuRecSys, IDreamRec, DiffRec, DiQDiff,
                DimeRec, DiffRec2, DDRM, DreamRecAblation, ResHeadCE, DiQDiffAblation, ResHeadCEDiQDiff,
                IDreamRecResidual, DiQDiffAuthors)
}


def get_model_class(name: str) -> type[SequentialRecommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None


def model_config(name: str, params: dict[str, Any] | None = None) -> Any:
    """The typed config of model ``name`` from ``params``; a ConfigError names the bad key. A config saved
    by an earlier version that gives ``dreamrec`` or ``diqdiff`` an option of a research variant names the variant."""
    cls = get_model_class(name)
    params = dict(params or {})
    if name in (DreamRec.name, DiQDiff.name):
        params, variant, options = split_legacy_params(name, params, set(cls.Config.model_fields))
        if variant is not None:
            raise ConfigError(
                f"model {name!r} runs the paper's method only; this config sets {', '.join(options)}, options of the "
                f"research variant {variant!r} (see `dreamrec.models.dreamrec_variants`): set `model: {variant}` (for "
                f"a run saved by an earlier version, in its config.yaml; the weights load unchanged)")
    try:
        return cls.Config(**params)
    except ValidationError as e:
        # model parameters are given bare (hidden=64) or as params.hidden; the trainer's as train.*
        keys = [*cls.Config.model_fields, *train_keys()]
        raise ConfigError(validation_message(e, f"model {name!r}", keys=keys)) from None


def build_model(name: str, n_items: int, max_len: int, params: dict[str, Any] | None = None) -> SequentialRecommender:
    return get_model_class(name)(n_items, max_len, model_config(name, params))
