"""Item texts, the text embedding model wrapper (cache, deterministic encoder) and the transforms A."""
import numpy as np
import pandas as pd
import pytest
import torch

from dreamrec.text import (
    MOVIELENS_TEMPLATE,
    CachedTextEncoder,
    DescriptionConfig,
    HashingTextEncoder,
    LinearTransform,
    build_item_texts,
    build_text_encoder,
    fit_scaling,
    fit_whitening,
    item_intent_texts,
    text_encoder_dim,
)
from dreamrec.text.item_text import make_description_generator


def test_movielens_template_and_default_text_column():
    meta = pd.DataFrame(
        {"title": ["Toy Story", "Heat"], "year": pd.array([1995, None], dtype="Int64"),
         "genres": ["Animation|Children's|Comedy", "Action"], "text": ["a", "b"]}
    )
    assert build_item_texts(meta, MOVIELENS_TEMPLATE) == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy", "Heat . Genres: Action"]
    assert build_item_texts(meta) == ["a", "b"]
    with pytest.raises(ValueError, match="plot"):
        build_item_texts(meta, "{plot}")
    assert item_intent_texts(meta, "genres") == [["a Animation movie", "a Children's movie", "a Comedy movie"],
                                                 ["a Action movie"]]


def test_description_generator_is_off_by_default():
    assert make_description_generator(DescriptionConfig()) is None
    cfg = DescriptionConfig(enabled=True, url="http://localhost:1/v1", api_key="secret")
    assert "api_key" not in cfg.model_dump()  # the key never reaches a run's config.yaml
    assert make_description_generator(cfg) is not None  # built, never called here


def test_hashing_encoder_is_deterministic_and_semantic():
    a, b = HashingTextEncoder(32), HashingTextEncoder(32)
    texts = ["jazz saxophone club", "Jazz saxophone evening", "rocket orbit planet", ""]
    E = a.encode(texts)
    assert E.shape == (4, 32) and E.dtype == np.float32
    np.testing.assert_array_equal(E, b.encode(texts))
    np.testing.assert_allclose(np.linalg.norm(E[:3], axis=1), 1.0, rtol=1e-5)
    assert not E[3].any()
    assert E[0] @ E[1] > 0.4 > abs(E[0] @ E[2])  # shared words -> high cosine
    assert text_encoder_dim("hashing:48") == 48 and text_encoder_dim("all-MiniLM-L6-v2") == 384


def test_cache_hits_and_misses_by_model_and_text_hash(tmp_path):
    enc = CachedTextEncoder(HashingTextEncoder(16), tmp_path)
    first = enc.encode(["alpha beta", "gamma", "alpha beta"])
    assert (enc.hits, enc.misses) == (0, 2)  # duplicates encoded once
    again = CachedTextEncoder(HashingTextEncoder(16), tmp_path)
    np.testing.assert_array_equal(again.encode(["gamma", "alpha beta", "delta"]), np.concatenate(
        [first[1:2], first[:1], HashingTextEncoder(16).encode(["delta"])]))
    assert (again.hits, again.misses) == (2, 1)
    other_model = CachedTextEncoder(HashingTextEncoder(16, seed=1), tmp_path)  # another model: its own key
    other_model.encode(["gamma"])
    assert (other_model.hits, other_model.misses) == (0, 1)
    assert isinstance(build_text_encoder("hashing:16", cache_dir=tmp_path), CachedTextEncoder)


def _anisotropic(n=500, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) + 3.0


def test_whitening_gives_zero_mean_identity_covariance_and_applies_to_intents():
    E = _anisotropic()
    A = LinearTransform(12, "whitening").double().fit(E, eps=0.0)
    Z = A(E)
    torch.testing.assert_close(Z.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(Z.T @ Z / len(Z), torch.eye(12, dtype=torch.float64), atol=1e-8, rtol=0)
    mu, W = fit_whitening(E, eps=0.0)
    torch.testing.assert_close(W, W.T)  # O Lambda^{-1/2} O^T is symmetric
    intent = E[:3] + 0.5  # an intention embedding goes through the SAME map
    torch.testing.assert_close(A(intent), (intent - mu) @ W)


def test_scaling_preserves_dot_product_order():
    E = _anisotropic().float()
    A = LinearTransform(12, "scaling").fit(E)
    q = E[:5]
    before = (q @ E.T).argsort(dim=1)
    after = (A(q) @ A(E).T).argsort(dim=1)
    assert torch.equal(before, after)
    mu, W = fit_scaling(E.double())
    a = float(W[0, 0])
    assert torch.count_nonzero(mu) == 0 and a > 0
    assert abs(float(A(E).square().sum(1).mean()) - 12) < 1e-3  # default a: unit second moment per entry


def test_any_string_is_encoded_and_hashed_even_a_lone_surrogate(tmp_path):
    """Issue 31: a lone surrogate (valid JSON, not encodable as UTF-8) used to raise in ``text_hash``."""
    from dreamrec.text.encoders import text_hash

    assert text_hash("\ud800 jazz") != text_hash("\udc00 jazz") != text_hash("jazz")  # distinct keys
    enc = CachedTextEncoder(HashingTextEncoder(16), tmp_path)
    out = enc.encode(["\ud800 jazz", "jazz"])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # the surrogate is no word: the same text
    np.testing.assert_array_equal(enc.encode_transient(["\udfff jazz \ud800"])[0], out[1])


def test_request_texts_stay_in_a_bounded_memory_cache(tmp_path):
    """Issue 31: request (intent) texts never reach the disk; the in-memory LRU has a fixed size."""
    enc = CachedTextEncoder(HashingTextEncoder(16), tmp_path, memory_size=8)
    enc.encode(["catalog text one", "catalog text two"])  # catalog texts: persisted
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 2
    for i in range(300):
        v = enc.encode_transient([f"anonymous request {i}"])
        np.testing.assert_array_equal(v, HashingTextEncoder(16).encode([f"anonymous request {i}"]))
    assert sorted(tmp_path.rglob("*.npy")) == files  # nothing new on disk
    assert len(enc._memory) == 8  # the LRU holds its capacity, no more
    hits = enc.hits
    enc.encode_transient(["anonymous request 299", "catalog text one"])  # recent in memory, catalog on disk
    assert enc.hits == hits + 2
