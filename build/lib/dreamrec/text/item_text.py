"""Item texts for the text embedding model (iDreamRec, Sec. 3.1 "item description").

iDreamRec asks an LLM to write a detailed description of every item from its basic metadata
(title, year, genres, ...) and encodes that description with a text embedding model. Here:

* :func:`build_item_texts` fills a ``str.format`` template with each item's metadata fields
  (:data:`MOVIELENS_TEMPLATE` = ``"{title} ({year}). Genres: {genres}"`` for MovieLens' ``movies.dat``);
  without a template the metadata's ``text`` column is used (the synthetic data's item text, the
  MovieLens reader's ``"Title (year). Genres: a, b"``);
* :class:`DescriptionGenerator` is the interface of the optional description step and
  :class:`OpenAIDescriptionGenerator` one implementation talking to any OpenAI-compatible
  ``/chat/completions`` endpoint. It is off by default (:class:`DescriptionConfig.enabled`) and
  never called in the tests;
* :func:`item_intent_texts` derives per-item intention texts from metadata (one per genre,
  ``"a Comedy movie"``, or the synthetic topic's words) used to train the intention condition.
"""
from __future__ import annotations

import json
import math
import os
import string
import urllib.request
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

MOVIELENS_TEMPLATE = "{title} ({year}). Genres: {genres}"
IntentSource = Literal["none", "genres", "topic"]


def _cell(v: Any) -> str:
    """A metadata cell as template text: missing -> "", ``"A|B"`` lists -> ``"A, B"``."""
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    s = str(v).strip()
    return ", ".join(p for p in s.split("|") if p) if "|" in s else s


def build_item_texts(meta: pd.DataFrame, template: str | None = None) -> list[str]:
    """One text per row of ``meta`` (rows aligned to internal ids 1..n).

    ``template``: a ``str.format`` template over ``meta``'s columns (e.g. :data:`MOVIELENS_TEMPLATE`);
    missing values become empty strings and ``|``-joined lists are written ``"a, b"``; an empty
    ``"()"`` left by a missing year is removed. ``None`` uses the ``text`` column, or joins every
    column when there is none.
    """
    if template is None:
        if "text" in meta.columns:
            return [_cell(v) for v in meta["text"].tolist()]
        cols = list(meta.columns)
        return [" ".join(t for t in (_cell(r[c]) for c in cols) if t) for r in meta.to_dict("records")]
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = sorted(fields - set(meta.columns))
    if missing:
        raise ValueError(f"item text template needs metadata columns {missing}; available: {list(meta.columns)}")
    out = []
    for row in meta.to_dict("records"):
        text = template.format(**{f: _cell(row[f]) for f in fields})
        out.append(" ".join(text.replace("()", "").split()))
    return out


def item_intent_texts(
    meta: pd.DataFrame, source: IntentSource, template: str = "a {} movie"
) -> list[list[str]]:
    """Candidate intention texts of every item (rows aligned to internal ids 1..n).

    ``genres``: one ``template.format(genre)`` per genre of the ``|``-joined ``genres`` column
    (``"a Comedy movie"``); ``topic``: the synthetic data's topic words (``"jazz saxophone evening
    club"``, its ``topic_text`` column, :func:`dreamrec.data.synthetic.topic_text`); ``none``: no intentions.
    """
    if source == "none":
        return [[] for _ in range(len(meta))]
    if source == "genres":
        if "genres" not in meta.columns:
            raise ValueError("intent_source 'genres' needs a 'genres' metadata column")
        return [[template.format(g) for g in str(v).split("|") if g] if isinstance(v, str) else [] for v in meta["genres"]]
    if source == "topic":
        if "topic_text" not in meta.columns:
            raise ValueError("intent_source 'topic' needs a 'topic_text' metadata column (the synthetic data's)")
        return [[str(t)] if isinstance(t, str) and t else [] for t in meta["topic_text"]]
    raise ValueError(f"unknown intent source {source!r}; expected none, genres or topic")


# ---- optional LLM descriptions ------------------------------------------------------------
DEFAULT_PROMPT = (
    "Write a short, factual description (about 60 words) of this item for a recommender system: "
    "what it is, its genre, themes and audience. Item: {text}"
)


class DescriptionConfig(BaseModel):
    """Settings of the optional description generator (off unless ``enabled``).

    ``url`` is the base of an OpenAI-compatible API (``.../v1``); the key is ``api_key`` or, when
    that is empty, the environment variable ``api_key_env``. ``api_key`` is never written back to
    a run's config.yaml (excluded from dumps).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    url: str | None = None
    api_key: str | None = Field(None, exclude=True, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    prompt: str = DEFAULT_PROMPT
    timeout_s: float = Field(60.0, gt=0)


@runtime_checkable
class DescriptionGenerator(Protocol):
    """Turns basic item texts into detailed descriptions, one output per input, in order."""

    def describe(self, texts: list[str]) -> list[str]: ...


class OpenAIDescriptionGenerator:
    """:class:`DescriptionGenerator` over an OpenAI-compatible ``POST {url}/chat/completions``."""

    def __init__(self, config: DescriptionConfig):
        if not config.url:
            raise ValueError("description generator: 'url' is required")
        self.config = config
        self.api_key = config.api_key or os.environ.get(config.api_key_env, "")

    def _request(self, text: str) -> str:
        cfg = self.config
        body = json.dumps(
            {"model": cfg.model, "messages": [{"role": "user", "content": cfg.prompt.format(text=text)}]}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(cfg.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:  # noqa: S310 (user-given URL)
            data = json.loads(resp.read().decode())
        return str(data["choices"][0]["message"]["content"]).strip()

    def describe(self, texts: list[str]) -> list[str]:
        """``"{text}. {description}"`` per item (the basic text is kept in front of the description)."""
        return [f"{t}. {self._request(t)}" for t in texts]


def make_description_generator(config: DescriptionConfig | None) -> DescriptionGenerator | None:
    """The configured generator, or None when descriptions are off."""
    if config is None or not config.enabled:
        return None
    return OpenAIDescriptionGenerator(config)
