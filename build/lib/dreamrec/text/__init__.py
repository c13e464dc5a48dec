"""Item text and text embeddings for text-based diffusion recommenders (iDreamRec).

* :mod:`dreamrec.text.item_text`: one text per item from its metadata (templates), optional
  LLM-written descriptions behind :class:`~dreamrec.text.item_text.DescriptionGenerator`, and the
  intention texts derived from item metadata (genres, topics).
* :mod:`dreamrec.text.encoders`: the text embedding model (TEM): sentence-transformers by name or
  path, a deterministic hashing encoder for tests, and an on-disk cache keyed by model + text hash.
* :mod:`dreamrec.text.transforms`: the linear maps ``A`` of the TEM space (scaling, whitening).
"""
from dreamrec.text.encoders import (
    CachedTextEncoder,
    HashingTextEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    build_text_encoder,
    text_encoder_dim,
)
from dreamrec.text.item_text import (
    MOVIELENS_TEMPLATE,
    DescriptionConfig,
    DescriptionGenerator,
    OpenAIDescriptionGenerator,
    build_item_texts,
    item_intent_texts,
)
from dreamrec.text.transforms import LinearTransform, fit_scaling, fit_whitening

__all__ = [
    "MOVIELENS_TEMPLATE",
    "CachedTextEncoder",
    "DescriptionConfig",
    "DescriptionGenerator",
    "HashingTextEncoder",
    "LinearTransform",
    "OpenAIDescriptionGenerator",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "build_item_texts",
    "build_text_encoder",
    "fit_scaling",
    "fit_whitening",
    "item_intent_texts",
    "text_encoder_dim",
]
