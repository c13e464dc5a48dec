"""Seeded synthetic interaction data with planted sequential structure and a known optimum.

The generator is a hidden Markov model over ``n_topics`` topics:

* every item belongs to exactly one topic (``item_topic``);
* items have a power-law popularity ``w_j = (rank_j + 1) ** -zipf`` (ranks a random permutation);
* the emission matrix is ``E[k, j] = (1 - noise) * w_j [topic(j) = k] / sum_{topic(i) = k} w_i
  + noise * w_j / sum_i w_i``, i.e. an item is drawn from the current topic in proportion to its
  popularity, and (only when ``noise > 0``) from the whole catalog with probability ``noise``;
* topics follow a Markov chain: ``z_1 ~ pi`` and ``z_{t+1} ~ P[z_t]`` where
  ``P[k, k] = stickiness`` and the remaining ``1 - stickiness`` goes mostly (``successor_mass``)
  to ``n_successors`` randomly chosen likely successor topics, the rest spread evenly over the
  other topics, so the chain is sparse enough to learn yet every transition is possible;
* each step emits one item ``x_t ~ E[z_t]``.

Because the splits are built so that no history is ever truncated by the window
(``max_len - 1 <= window``), the visible history of a sample is the user's whole prefix
``x_1..x_T`` and the predictive distribution

    p(x_{T+1} = j | x_1..x_T) = sum_k q_T(k) E[k, j],   q_T = normalise(alpha_T) @ P,
    alpha_1(k) = pi(k) E[k, x_1],   alpha_t(k) = (normalise(alpha_{t-1}) @ P)(k) E[k, x_t],

(``q_0 = pi`` for the empty history) computed by the forward algorithm in :func:`bayes_scores`
is exact. Ranking items by it maximises the expected HR@K, NDCG@K and MRR@K of every row (the
discounts are non-increasing in rank, so sorting by probability is optimal by the rearrangement
inequality); :func:`bayes_optimal` returns these expectations, which no model can beat in
expectation. A popularity ranking scores clearly below the bound with the defaults.

``generate(SyntheticConfig())`` is the embedded default data set of ``dreamrec demo``: about
2000 users, 500 items and 25k interactions, generated in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, pad_left

ITEM_ID_OFFSET = 1000  # original item id = ITEM_ID_OFFSET + item index (so originals differ from internal ids)
USER_ID_OFFSET = 10_000  # original user id = USER_ID_OFFSET + user index
DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)

_TOPIC_WORDS: list[tuple[str, ...]] = [
    ("jazz", "saxophone", "evening", "club"),
    ("hiking", "mountain", "trail", "boots"),
    ("baking", "bread", "flour", "oven"),
    ("space", "rocket", "orbit", "planet"),
    ("garden", "tulip", "soil", "seeds"),
    ("chess", "opening", "gambit", "endgame"),
    ("surfing", "wave", "board", "beach"),
    ("poetry", "sonnet", "verse", "rhyme"),
    ("robotics", "servo", "sensor", "circuit"),
    ("coffee", "espresso", "roast", "grinder"),
    ("knitting", "wool", "needle", "pattern"),
    ("cycling", "pedal", "gear", "helmet"),
    ("opera", "aria", "soprano", "stage"),
    ("fishing", "lake", "lure", "rod"),
    ("pottery", "clay", "kiln", "glaze"),
    ("astronomy", "telescope", "nebula", "comet"),
    ("skiing", "slope", "powder", "lift"),
    ("painting", "canvas", "brush", "easel"),
    ("camping", "tent", "campfire", "lantern"),
    ("cooking", "spice", "curry", "wok"),
]


class SyntheticConfig(BaseModel):
    """Parameters of the synthetic generator (see the module docstring for the model)."""

    model_config = ConfigDict(extra="forbid")

    n_users: int = Field(2000, ge=1)
    n_items: int = Field(500, ge=1)
    n_topics: int = Field(10, ge=1)
    min_len: int = Field(5, ge=3, description="shortest user sequence (>= 3 so leave-one-out keeps a train item)")
    max_len: int = Field(20, ge=3, description="longest user sequence; max_len - 1 <= window")
    zipf: float = Field(0.5, ge=0.0, description="power-law exponent of item popularity")
    stickiness: float = Field(0.75, ge=0.0, le=1.0, description="probability of staying in the current topic")
    n_successors: int = Field(2, ge=0, description="likely successor topics of each topic")
    successor_mass: float = Field(0.9, ge=0.0, le=1.0, description="share of the switching mass on the successors")
    noise: float = Field(0.0, ge=0.0, le=1.0, description="probability an item is drawn from the whole catalog")
    protocol: Literal["loo", "dreamrec"] = "loo"
    window: int = Field(20, ge=1, description="history width of the prepared splits")
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        if self.max_len - 1 > self.window:
            raise ValueError(
                f"max_len - 1 ({self.max_len - 1}) exceeds window ({self.window}): histories would be truncated"
            )
        if self.n_topics > self.n_items:
            raise ValueError(f"n_topics ({self.n_topics}) exceeds n_items ({self.n_items}): a topic would be empty")
        if any(r < 0 for r in self.split_ratio) or sum(self.split_ratio) <= 0:
            raise ValueError("split_ratio must be non-negative with a positive sum")
        return self


@dataclass
class SyntheticData:
    """Generated data plus the generator's parameters.

    ``pi`` [K] initial topic distribution; ``transition`` [K, K] row-stochastic ``P``;
    ``emission`` [K, n_items] row-stochastic ``E`` (column ``j`` = internal item ``j + 1``);
    ``item_topic`` [n_items] topic of each item; ``popularity`` [n_items] the weights ``w``.
    ``sequences`` holds every user's full internal-id sequence (oldest first).
    """

    config: SyntheticConfig
    interactions: pd.DataFrame
    item_text: pd.DataFrame
    dataset: PreparedDataset
    pi: np.ndarray
    transition: np.ndarray
    emission: np.ndarray
    item_topic: np.ndarray
    popularity: np.ndarray
    sequences: Sequences


def topic_words(k: int) -> tuple[str, ...]:
    """The distinctive words of topic ``k`` (made-up ones past the built-in word bank)."""
    if k < len(_TOPIC_WORDS):
        return _TOPIC_WORDS[k]
    return (f"theme{k}", f"motif{k}", f"genre{k}")


def topic_text(k: int) -> str:
    """The intention text of topic ``k`` (iDreamRec's ``intent_source: topic``): its words joined by spaces."""
    return " ".join(topic_words(k))


def _parameters(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    k_n, n = cfg.n_topics, cfg.n_items
    # balanced random topic assignment
    item_topic = np.empty(n, dtype=np.int64)
    item_topic[rng.permutation(n)] = np.arange(n) % k_n
    popularity = (rng.permutation(n) + 1.0) ** -cfg.zipf
    onehot = np.zeros((k_n, n))
    onehot[item_topic, np.arange(n)] = 1.0
    within = onehot * popularity[None, :]
    within /= within.sum(1, keepdims=True)
    emission = (1.0 - cfg.noise) * within + cfg.noise * (popularity / popularity.sum())[None, :]

    transition = np.zeros((k_n, k_n))
    for k in range(k_n):
        others = np.array([j for j in range(k_n) if j != k], dtype=np.int64)
        if len(others) == 0:
            transition[k, k] = 1.0
            continue
        rng.shuffle(others)
        n_succ = min(cfg.n_successors, len(others))
        succ, rest = others[:n_succ], others[n_succ:]
        switch = 1.0 - cfg.stickiness
        mass = cfg.successor_mass if len(rest) else 1.0
        if n_succ == 0:
            mass = 0.0
        if n_succ:
            shares = 2.0 ** -np.arange(n_succ)  # the first successor twice as likely as the second, ...
            transition[k, succ] = switch * mass * shares / shares.sum()
        if len(rest):
            transition[k, rest] = switch * (1.0 - mass) / len(rest)
        transition[k, k] = cfg.stickiness
    transition /= transition.sum(1, keepdims=True)
    pi = rng.dirichlet(np.full(k_n, 5.0))
    return {
        "item_topic": item_topic,
        "popularity": popularity,
        "emission": emission,
        "transition": transition,
        "pi": pi,
    }


def _sample_categorical(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise inverse-CDF sampling: ``cdf`` [B, m] (last column 1), ``u`` [B] uniform."""
    return np.minimum((cdf < u[:, None]).sum(1), cdf.shape[1] - 1)


def _sample_sequences(cfg: SyntheticConfig, params: dict[str, np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Sample every user's internal-id sequence (all users advanced together, one step at a time)."""
    u_n = cfg.n_users
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=u_n)
    t_cdf = np.cumsum(params["transition"], 1)
    e_cdf = np.cumsum(params["emission"], 1)
    pi_cdf = np.cumsum(params["pi"])
    out = np.zeros((u_n, cfg.max_len), dtype=np.int64)
    z = _sample_categorical(np.broadcast_to(pi_cdf, (u_n, len(pi_cdf))), rng.random(u_n))
    for t in range(cfg.max_len):
        if t > 0:
            z = _sample_categorical(t_cdf[z], rng.random(u_n))
        out[:, t] = _sample_categorical(e_cdf[z], rng.random(u_n)) + 1
    return [out[u, : lengths[u]] for u in range(u_n)]


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate interactions, item texts and a :class:`PreparedDataset` for ``config.protocol``.

    ``loo``: train is the sequences ``seq[:-2]``; val the rows ``seq[:-2] -> seq[-2]``; test the
    rows ``seq[:-1] -> seq[-1]`` (all users). ``dreamrec``: users are split 8:1:1 (``split_ratio``)
    by the time of their first interaction, and every prefix of a user's sequence (including the
    empty history before the first event) is one row of that user's split.
    """
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    params = _parameters(cfg, rng)
    seqs = _sample_sequences(cfg, params, rng)
    seq_all = Sequences.from_lists(seqs)
    lengths = seq_all.lengths()

    # timestamps (seconds): start times spread over a year, gaps of about a day
    start = rng.integers(0, 365 * 86_400, size=cfg.n_users)
    gaps = rng.integers(600, 2 * 86_400, size=len(seq_all.items))
    user_of_event = np.repeat(np.arange(cfg.n_users), lengths)
    first = seq_all.offsets[:-1]
    gaps[first] = 0
    cum = np.cumsum(gaps)
    ts = start[user_of_event] + cum - np.repeat(cum[first], lengths)

    item_orig = ITEM_ID_OFFSET + np.arange(cfg.n_items)
    user_orig = USER_ID_OFFSET + np.arange(cfg.n_users)
    interactions = pd.DataFrame(
        {
            "user": user_orig[user_of_event],
            "item": item_orig[seq_all.items - 1],
            "timestamp": ts.astype(np.int64),
        }
    )
    texts = []
    for j in range(cfg.n_items):
        words = list(topic_words(int(params["item_topic"][j])))
        order = rng.permutation(len(words))
        texts.append(" ".join(words[i] for i in order[: max(3, len(words) - 1)]) + f" {item_orig[j]}")
    item_text = pd.DataFrame(
        {"text": texts, "topic": params["item_topic"].astype(np.int64),
         "topic_text": [topic_text(int(k)) for k in params["item_topic"]]},
        index=pd.Index(item_orig, name="item"),
    )

    dataset = _build_dataset(cfg, seqs, start, item_orig, user_orig, item_text)
    return SyntheticData(
        config=cfg,
        interactions=interactions,
        item_text=item_text,
        dataset=dataset,
        pi=params["pi"],
        transition=params["transition"],
        emission=params["emission"],
        item_topic=params["item_topic"],
        popularity=params["popularity"],
        sequences=seq_all,
    )


def _rows(seqs: list[np.ndarray], users: np.ndarray, width: int, cut: int) -> SampleRows:
    """Row ``seq[:len-cut] -> seq[len-cut]`` for each listed user."""
    hist = [seqs[u][: len(seqs[u]) - cut] for u in users]
    target = np.array([seqs[u][len(seqs[u]) - cut] for u in users], dtype=np.int64)
    return SampleRows(pad_left(hist, width), target, np.asarray(users, dtype=np.int64))


def _prefix_rows(seqs: list[np.ndarray], users: np.ndarray, width: int) -> SampleRows:
    """Every prefix ``seq[:t] -> seq[t]`` (t = 0..len-1) of each listed user, users in order."""
    hist, target, user = [], [], []
    for u in users:
        s = seqs[u]
        for t in range(len(s)):
            hist.append(s[:t])
            target.append(s[t])
            user.append(u)
    return SampleRows(pad_left(hist, width), np.array(target, dtype=np.int64), np.array(user, dtype=np.int64))


def _build_dataset(
    cfg: SyntheticConfig,
    seqs: list[np.ndarray],
    start: np.ndarray,
    item_orig: np.ndarray,
    user_orig: np.ndarray,
    item_text: pd.DataFrame,
) -> PreparedDataset:
    w = cfg.window
    users = np.arange(cfg.n_users)
    if cfg.protocol == "loo":
        train: SampleRows | Sequences = Sequences.from_lists([s[:-2] for s in seqs], users)
        val = _rows(seqs, users, w, 2)
        test = _rows(seqs, users, w, 1)
        split_users = {"train": cfg.n_users, "val": cfg.n_users, "test": cfg.n_users}
    else:
        by_start = np.argsort(start, kind="stable")
        ratio = np.asarray(cfg.split_ratio, dtype=np.float64)
        bounds = np.round(np.cumsum(ratio / ratio.sum()) * cfg.n_users).astype(np.int64)
        parts = np.split(by_start, bounds[:2])
        train = _prefix_rows(seqs, parts[0], w)
        val = _prefix_rows(seqs, parts[1], w)
        test = _prefix_rows(seqs, parts[2], w)
        split_users = {"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2])}
    item_meta = item_text.reindex(item_orig).reset_index(drop=True)
    info: dict[str, Any] = {
        "source": "synthetic",
        "config": cfg.model_dump(mode="json"),
        "n_interactions": int(sum(len(s) for s in seqs)),
        "split_users": split_users,
    }
    return PreparedDataset(
        item_ids=pd.Series(item_orig, name="item_id"),
        train=train,
        val=val,
        test=test,
        max_len=w,
        protocol=cfg.protocol,
        user_ids=pd.Series(user_orig, name="user_id"),
        item_meta=item_meta,
        info=info,
    )


# ---- the optimum --------------------------------------------------------------------------


def forward_predictive(
    history: np.ndarray, pi: np.ndarray, transition: np.ndarray, emission: np.ndarray
) -> np.ndarray:
    """Predictive topic distribution ``q_T`` of the next step for every row of ``history``.

    ``history`` [N, W] right-aligned internal ids (0 = padding). The recursion (normalised at
    every step) is ``q_0 = pi``; ``b_t = normalise(q_{t-1} * E[:, x_t])``; ``q_t = b_t @ P``.
    Rows are processed together one column at a time; a padding column leaves a row's ``q``
    untouched (right alignment means padding only precedes the first item).
    Returns [N, K].
    """
    history = np.asarray(history, dtype=np.int64)
    n = history.shape[0]
    q = np.broadcast_to(pi, (n, len(pi))).astype(np.float64, copy=True)
    for c in range(history.shape[1]):
        x = history[:, c]
        live = x > 0
        if not live.any():
            continue
        b = q[live] * emission[:, x[live] - 1].T
        z = b.sum(1, keepdims=True)
        # an item impossible under every topic (cannot happen for generated data): keep the prior
        b = np.where(z > 0, b / np.where(z > 0, z, 1.0), q[live])
        q[live] = b @ transition
    return q


def bayes_scores(data: SyntheticData, rows: SampleRows) -> np.ndarray:
    """Exact ``p(next item | visible history)`` [N, n_items] (column ``j`` = internal item ``j + 1``).

    ``p = q_T @ E`` with ``q_T`` from :func:`forward_predictive`; ``q_0 = pi`` for an empty history.
    """
    q = forward_predictive(rows.history, data.pi, data.transition, data.emission)
    return q @ data.emission


def expected_metrics(probs: np.ndarray, ks: tuple[int, ...] | list[int] = DEFAULT_KS) -> dict[str, float]:
    """Expected HR/NDCG/MRR@K of ranking each row of ``probs`` [N, n] by probability, averaged.

    With ``p_(0) >= p_(1) >= ...`` a row's probabilities sorted descending:
    ``E[HR@K] = sum_{r<K} p_(r)``, ``E[NDCG@K] = sum_{r<K} p_(r) / log2(r + 2)``,
    ``E[MRR@K] = sum_{r<K} p_(r) / (r + 1)``. Also returns ``n`` (the number of rows).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    kmax = min(max(ks), probs.shape[1]) if len(ks) else 0
    if kmax < probs.shape[1]:
        top = -np.partition(-probs, kmax - 1, axis=1)[:, :kmax]
    else:
        top = probs
    top = -np.sort(-top, axis=1)
    r = np.arange(top.shape[1], dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        part = top[:, :k]
        rk = r[: part.shape[1]]
        out[f"HR@{k}"] = float(part.sum(1).mean()) if n else 0.0
        out[f"NDCG@{k}"] = float((part / np.log2(rk + 2)).sum(1).mean()) if n else 0.0
        out[f"MRR@{k}"] = float((part / (rk + 1)).sum(1).mean()) if n else 0.0
    out["n"] = n
    return out


def bayes_optimal(data: SyntheticData, split: str = "test", ks: tuple[int, ...] | list[int] = DEFAULT_KS) -> dict[str, float]:
    """The Bayes bound on ``split``: mean expected HR@K, NDCG@K, MRR@K of the optimal ranking.

    This is the best any model can achieve in expectation on that split (see the module docstring).
    """
    rows = data.dataset.split(split)
    return expected_metrics(bayes_scores(data, rows), ks)
