"""iDreamRec (Hu et al., 2024, arXiv:2410.13428): text-guided diffusion for sequential recommendation.

DreamRec (Yang et al., 2023) generates the embedding of an oracle next item from the history and
recommends the catalog items nearest to it; its item table is learned from random IDs. iDreamRec
replaces that table with FIXED text embeddings and adds intention texts as a second condition:

1. item text (Sec. 3.1): one text per item from its metadata (:func:`dreamrec.text.build_item_texts`,
   ``text_template``), optionally rewritten by an LLM (``describe``, off by default);
2. text embedding model: ``e_i = TEM(text_i)`` (``text_encoder``: sentence-transformers name or path,
   default ``all-MiniLM-L6-v2``; ``hashing:D`` for a dependency-free encoder), cached on disk;
3. linear transform (Sec. 3.2): ``x_0 = A(e_i)`` with ``A(e) = a e`` (scaling) or
   ``A(e) = (e - mu) O Lambda^{-1/2} O^T`` (whitening, fitted on the catalog); intentions go through
   the same ``A``: ``iota = A(TEM(intention))``;
4. denoiser (Sec. 3.3): :class:`~dreamrec.nn.dit.InContextDiT` over the tokens
   ``[A(e_1..e_L) + pos, ∅_h, iota or ∅_iota, tau(t), x_t]``, output at ``x_t`` = ``x0_hat``;
   trained with the x0 loss ``|| x_0 - f(x_t, h, iota, t) ||^2`` (DreamRec Eq. 14), each condition
   dropped to its null token with probability ``p_uncond`` (0.1), no negative sampling;
5. generation: DDIM with ``S`` steps or one step (``sampler``), guided by
   ``(1 + w + rho) f(h, iota) - w f(∅, iota) - rho f(h, ∅)`` (:mod:`dreamrec.diffusion.multi_guidance`,
   one batched call per step); the generated ``x_0`` is the query and items are ranked by the
   dot product ``x_0 · A(e_j)`` over the whole catalog.

Intentions at training time: with ``intent_source`` = ``genres`` (``"a Comedy movie"`` per genre of
the target) or ``topic`` (the synthetic topic words of the target), a training row carries one of
its target's intention texts with probability ``p_intent``; otherwise, and with ``none``, ``∅_iota``.

Persistence: the raw text embeddings ``item_text_emb [n + 1, D]`` and the transform (``A.mu``,
``A.W``) are buffers, saved in ``model.safetensors``, so a run directory is self-contained; the TEM
is needed again only to embed new intention texts and is rebuilt from ``text_encoder`` on first use.
Because ``text_dim`` is resolved when the model is built and written to ``config.yaml``, loading a
run never loads the TEM.

An item that never occurs in training (a cold item) still has its text embedding, so
it can be generated and recommended (:mod:`dreamrec.eval.coldstart`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from dreamrec.data.batching import Batch
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.multi_guidance import TwoConditionGuidance, drop_mask, guidance_branches
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, switch_sampler
from dreamrec.nn.dit import DiTContext, InContextDiT
from dreamrec.text.encoders import (
    DEFAULT_TEXT_ENCODER,
    TextEncoder,
    build_text_encoder,
    encode_request_texts,
    text_encoder_dim,
)
from dreamrec.text.item_text import (
    DescriptionConfig,
    IntentSource,
    build_item_texts,
    item_intent_texts,
    make_description_generator,
)
from dreamrec.text.transforms import LinearTransform, TransformKind


class IDreamRecConfig(ModelConfig):
    # item text and TEM
    text_encoder: str = Field(
        DEFAULT_TEXT_ENCODER, description="sentence-transformers name or path, or hashing[:dim] (tests)"
    )
    text_dim: int | None = Field(None, ge=1, description="TEM output size D; resolved from text_encoder when built")
    text_template: str | None = Field(
        None, description="str.format template over item metadata, e.g. '{title} ({year}). Genres: {genres}'; "
        "None = the metadata's text column"
    )
    text_cache_dir: str | None = Field(None, description="embedding cache; default ~/.cache/dreamrec/text_embeddings")
    describe: DescriptionConfig = Field(default_factory=DescriptionConfig)
    # linear transform A
    transform: TransformKind = "whitening"
    scale: float | None = Field(None, gt=0, description="a of the scaling A(e) = a e; None = sqrt(D / mean |e|^2)")
    whitening_eps: float = Field(1e-6, ge=0)
    # denoiser (in-context DiT)
    hidden: int = Field(128, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    # diffusion
    timesteps: int = Field(1000, ge=1)
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(10.0, gt=0)
    x0_loss: Literal["mse", "cosine"] = "mse"
    # classifier-free guidance over history (w) and intention (rho)
    p_uncond_history: float = Field(0.1, ge=0, le=1)
    p_uncond_intent: float = Field(0.1, ge=0, le=1)
    guidance_w: float = Field(2.0, ge=0, description="history guidance strength w")
    intent_rho: float = Field(2.0, ge=0, description="intention guidance strength rho")
    # intentions seen in training
    intent_source: IntentSource = "none"
    intent_template: str = "a {} movie"
    p_intent: float = Field(0.5, ge=0, le=1, description="share of training rows given an intention of their target")
    # sampling
    sampler: Sampler = Field("onestep", description="onestep (the paper's efficient inference), ddim (S steps) or ddpm")
    sampler_steps: int | None = Field(20, ge=1, description="S for ddim/ddpm; None = all T")
    ddim_eta: float = Field(0.0, ge=0, le=1)


class IDreamRec(SequentialRecommender):
    name: ClassVar[str] = "idreamrec"
    Config: ClassVar[type[ModelConfig]] = IDreamRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    supports_intent: ClassVar[bool] = True
    config: IDreamRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or IDreamRecConfig()
        assert isinstance(config, IDreamRecConfig)
        if config.text_dim is None:
            config = config.model_copy(update={"text_dim": text_encoder_dim(config.text_encoder)})
        super().__init__(n_items, max_len, config)
        D = int(config.text_dim)  # type: ignore[arg-type]
        self.register_buffer("item_text_emb", torch.zeros(n_items + 1, D))  # e_i = TEM(text_i), row 0 padding
        self.A = LinearTransform(D, config.transform)
        self.denoiser = InContextDiT(
            D, max_len, hidden=config.hidden, n_layers=config.n_layers, n_heads=config.n_heads,
            mlp_ratio=config.mlp_ratio, dropout=config.dropout,
        )
        self.scheduler = DiffusionScheduler(
            num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule, prediction_type="x0",
            beta_start=config.beta_start, beta_end=config.beta_end, beta_min=config.beta_min, beta_max=config.beta_max,
        )
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)
        # training-only intention candidates (not persisted): raw TEM rows and per-item indices (-1 = none)
        self.register_buffer("intent_table", torch.zeros(0, D), persistent=False)
        self.register_buffer("item_intents", torch.zeros(n_items + 1, 0, dtype=torch.long), persistent=False)
        self._encoder: TextEncoder | None = None
        self._table: torch.Tensor | None = None
        self.network_calls = 0  # denoiser calls made by generate (for tests / cost accounting)

    # -- text ------------------------------------------------------------------------------
    @property
    def text_encoder(self) -> TextEncoder:
        """The TEM (built from ``config.text_encoder`` on first use, with the disk cache)."""
        if self._encoder is None:
            self._encoder = build_text_encoder(self.config.text_encoder, cache_dir=self.config.text_cache_dir)
        return self._encoder

    def fit_statistics(self, dataset: Any) -> None:
        """Embed every item's text with the TEM, fit ``A`` on them and collect the training intentions.

        ``dataset.item_meta`` (rows aligned to internal ids) must be present: the texts come from it.
        """
        meta = getattr(dataset, "item_meta", None)
        if meta is None or len(meta) != self.n_items:
            raise ValueError("iDreamRec needs item metadata (item_meta) with one row per item to build item texts")
        cfg = self.config
        texts = build_item_texts(meta, cfg.text_template)
        generator = make_description_generator(cfg.describe)
        if generator is not None:
            texts = generator.describe(texts)
        E = torch.from_numpy(np.asarray(self.text_encoder.encode(texts), dtype=np.float32))
        self.set_item_text_embeddings(E)
        cands = item_intent_texts(meta, cfg.intent_source, cfg.intent_template)
        uniq = sorted({s for c in cands for s in c})
        K = max((len(c) for c in cands), default=0)
        index = {s: i for i, s in enumerate(uniq)}
        table = np.full((self.n_items + 1, K), -1, dtype=np.int64)
        for j, c in enumerate(cands, start=1):
            table[j, : len(c)] = [index[s] for s in c]
        dev = self.item_text_emb.device
        self.item_intents = torch.from_numpy(table).to(dev)
        self.intent_table = (
            torch.from_numpy(np.asarray(self.text_encoder.encode(uniq), dtype=np.float32)).to(dev)
            if uniq else torch.zeros(0, self.item_text_emb.shape[1], device=dev)
        )

    def set_item_text_embeddings(self, E: torch.Tensor) -> None:
        """Set the raw TEM embeddings ``E [n_items, D]`` of items 1..n and fit ``A`` on them."""
        if tuple(E.shape) != (self.n_items, self.item_text_emb.shape[1]):
            raise ValueError(f"expected embeddings [{self.n_items}, {self.item_text_emb.shape[1]}], got {tuple(E.shape)}")
        with torch.no_grad():
            self.item_text_emb[0].zero_()
            self.item_text_emb[1:].copy_(E.to(self.item_text_emb))
        self.A.fit(E, scale=self.config.scale, eps=self.config.whitening_eps)
        self._table = None

    def encode_intents(self, intents: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A(TEM(intention)) [B, D], present [B])`` for texts (None or blank = no intention)."""
        dev = self.item_text_emb.device
        present = [t is not None and str(t).strip() != "" for t in intents]
        D = self.item_text_emb.shape[1]
        emb = torch.zeros(len(intents), D, device=dev)
        texts = [str(t) for t, p in zip(intents, present) if p]
        if texts:
            # request texts: the bounded in-memory cache only, never the disk
            e = torch.from_numpy(np.asarray(encode_request_texts(self.text_encoder, texts), dtype=np.float32))
            e = e.to(dev)
            emb[torch.tensor(present, device=dev)] = self.A(e)
        return emb, torch.tensor(present, dtype=torch.bool, device=dev)

    # -- the transformed item table -----------------------------------------------------------
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "IDreamRec":
        self._table = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._table = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def item_embeddings(self) -> torch.Tensor:
        """``[n + 1, D]``: the item table, the history tokens, the diffusion targets and the retrieval keys; here
        the fixed text table :meth:`text_table`."""
        return self.text_table()

    def target_embeddings(self, table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``x_0 [B, D]``: the targets' rows of the item table ``table`` (a hook for variants)."""
        return table[target]

    def text_table(self) -> torch.Tensor:
        """``[n + 1, D]``: ``A(e_j)`` for items 1..n, row 0 zero (padding). Cached; the table is fixed.

        Built with autocast off, in the model's own dtype: the first call may come inside the trainer's
        bf16 autocast, and a cached bf16 table would then meet float32 weights at evaluation.
        """
        if self._table is None or self._table.device != self.item_text_emb.device:
            dev = self.item_text_emb.device.type
            with torch.no_grad(), torch.autocast(device_type=dev, enabled=False):
                table = self.A(self.item_text_emb)
                table[0] = 0
            self._table = table
        return self._table

    # -- conditions ----------------------------------------------------------------------------
    def _history(self, history: torch.Tensor, table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The history tokens (rows of the item table ``table``, default :meth:`item_embeddings`) and their mask."""
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        return (self.item_embeddings() if table is None else table)[history], history > 0

    def _training_intents(self, target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One random intention of each row's target (probability ``p_intent``), else none."""
        if self.item_intents.shape[1] == 0 or self.intent_table.shape[0] == 0:
            return None, None
        cands = self.item_intents[target]  # [B, K]
        n_c = (cands >= 0).sum(1)
        pick = (torch.rand(target.shape[0], device=target.device) * n_c.clamp(min=1)).long()
        idx = cands.gather(1, pick.clamp(max=cands.shape[1] - 1)[:, None])[:, 0]
        present = (n_c > 0) & (torch.rand(target.shape[0], device=target.device) < self.config.p_intent)
        emb = self.A(self.intent_table[idx.clamp(min=0)])
        return emb, present

    # -- training ------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        """x0 loss ``|| A(e_n) - f(x_t, h, iota, t) ||^2`` with conditions dropped at ``p_uncond``."""
        cfg = self.config
        table = self.item_embeddings()
        x0 = self.target_embeddings(table, batch.target)
        B = x0.shape[0]
        h_emb, h_mask = self._history(batch.history, table)
        h_mask = h_mask & ~drop_mask(B, cfg.p_uncond_history, x0.device)[:, None]
        i_emb, i_mask = self._training_intents(batch.target)
        if i_mask is not None:
            i_mask = i_mask & ~drop_mask(B, cfg.p_uncond_intent, x0.device)
        t = self.scheduler.sample_timesteps(B, device=x0.device)
        x_t = self.scheduler.add_noise(x0, torch.randn_like(x0), t)
        x0_hat = self.denoiser(x_t, t, self.denoiser.context(h_emb, h_mask, i_emb, i_mask))
        if cfg.x0_loss == "cosine":
            return (1.0 - F.cosine_similarity(x0_hat, x0, dim=-1, eps=1e-8)).mean()
        return F.mse_loss(x0_hat, x0)

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, history: torch.Tensor, intent: list[str | None] | None = None) -> torch.Tensor:
        """The oracle item ``x_0 [B, D]`` for each history (and intention text), guided sampling."""
        cfg = self.config
        B = history.shape[0]
        if intent is not None and len(intent) != B:
            raise ValueError(f"got {len(intent)} intents for {B} histories")
        h_emb, h_mask = self._history(history)
        i_emb, i_mask = self.encode_intents(list(intent)) if intent is not None else (None, None)
        rho = cfg.intent_rho if i_mask is not None and bool(i_mask.any()) else 0.0  # f(h, ∅) = f(h, iota) otherwise
        parts: list[DiTContext] = []
        for branch in guidance_branches(cfg.guidance_w, rho):
            hm = torch.zeros_like(h_mask) if branch == "no_history" else h_mask
            im = None if (branch == "no_intent" or i_mask is None) else i_mask
            parts.append(self.denoiser.context(h_emb, hm, i_emb if im is not None else None, im))
        ctx = parts[0] if len(parts) == 1 else DiTContext.cat(parts)
        model_fn = TwoConditionGuidance(self.denoiser, ctx, B, cfg.guidance_w, rho)
        D = h_emb.shape[-1]
        x0 = sample(model_fn, self.scheduler, (B, D), device=h_emb.device, dtype=h_emb.dtype)
        self.network_calls += model_fn.calls
        return x0

    def query(self, history: torch.Tensor, intent: list[str | None] | None = None) -> torch.Tensor:
        return self.generate(history, intent)

    def set_sampler(
        self,
        sampler: Sampler | None = None,
        steps: int | None = None,
        *,
        eta: float | None = None,
        guidance_w: float | None = None,
        intent_rho: float | None = None,
    ) -> None:
        """Change how :meth:`generate` samples without retraining (``steps`` is set whenever
        ``sampler`` is given; other None arguments keep their value). Updates ``self.config``."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, guidance_w=guidance_w, intent_rho=intent_rho)
