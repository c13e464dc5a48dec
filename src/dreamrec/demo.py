"""``dreamrec demo``: every registered model on the embedded synthetic data, beside the Bayes bound."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.models import MODELS
from dreamrec.train.run import train_run

# DreamRec's method (Algorithms 1-2, DDPM over all T steps, w = 2) with a short chain, T = 100, and the mlp2 denoiser.
# On this data its joint x0 loss collapses the item table within a few epochs and the row stays below popularity
# (benchmarks/experiments/dreamrec/NOTES.md): the demo shows the paper's method as it is.
_DREAMREC: dict[str, Any] = {"hidden": 64, "timesteps": 100, "denoiser": "mlp2"}
# dreamrec-ablation: a stop-gradient x0 target and training at t = T for the one-step sampler stop the collapse
_ABLATION: dict[str, Any] = {**_DREAMREC, "sampler": "onestep", "guidance_w": 0.0, "target_grad": False,
                             "train_timesteps": "last"}
# reshead-ce (no diffusion): its Zhihu recipe with a one-block encoder of the demo's size
_RESHEAD: dict[str, Any] = {"hidden": 64, "n_layers": 1, "n_heads": 1, "inner_size": 64, "dropout": 0.2, "timesteps": 100}

# the hashing text encoder needs no download and no `text` extra
_IDREAMREC: dict[str, Any] = {"text_encoder": "hashing:32", "hidden": 32, "n_layers": 1, "n_heads": 2, "timesteps": 100,
                              "beta_end": 0.2, "transform": "scaling"}
# one small block, T = 4 and two DDIM steps; a N(0, 0.1^2) item table learns far faster than N(0, 1)
_DIFFUREC: dict[str, Any] = {"hidden": 32, "n_blocks": 1, "n_heads": 1, "timesteps": 4, "sampler": "ddim",
                             "sampler_steps": 2, "item_init_std": 0.1, "emb_dropout": 0.1}

# small, quick settings per model for the demo (anything not listed uses its defaults)
DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "idreamrec": _IDREAMREC,
    "idreamrec-residual": _IDREAMREC,
    "sasrec": {"hidden": 64, "n_layers": 1, "dropout": 0.2},
    "gru4rec": {"embedding": 64, "hidden": 64},
    "caser": {"hidden": 32, "window": 5, "n_h": 8, "n_v": 4},
    "cl4srec": {"hidden": 32, "n_layers": 1, "dropout": 0.2},
    "diffurec": _DIFFUREC,
    # the DiQDiff authors' code (DiffuRec-based) and the DiffuRecSys code's network at diffurec's demo size
    "diqdiff-authors": {**_DIFFUREC, "n_codes": 8},
    "diffurecsys": _DIFFUREC,
    # T-DiffRec: recency weights and a plain MSE learn the planted topics faster than the paper's SNR weights
    "diffrec": {"dims": [200], "time_weights": [0.1, 1.0], "reweight": False, "dropout": 0.2},
    "dreamrec": _DREAMREC,
    "dreamrec-ablation": _ABLATION,
    "reshead-ce": _RESHEAD,
    # each generator's demo settings plus DiQDiff's codebook (8 codes) and contrastive term
    "diqdiff": {**_DREAMREC, "n_codes": 8},
    "diqdiff-ablation": {**_ABLATION, "n_codes": 8},
    "reshead-ce-diqdiff": {**_RESHEAD, "n_codes": 8},
    # Du et al.: the step embedding at the noisy slot only (the paper's z_n everywhere does not learn the planted
    # topics in a few epochs), one-step inference and one small block (a 2-block d = 64 encoder over one
    # (history, next item) pair per event made it the slowest demo model by far)
    "diffrec2": {"hidden": 32, "n_layers": 1, "n_heads": 1, "sampler": "onestep", "step_everywhere": False},
    # ten DDIM steps instead of the paper's DDPM over T = 100 keep validation cheap
    "dimerec": {"sampler": "ddim", "sampler_steps": 10},
}


def _short_warnings(found: list[str]) -> str:
    """The health checks' warnings of a run (dreamrec.train.health) as a few words for the table."""
    words = []
    if any("collapsed" in w for w in found):
        words.append("item table collapsed")
    if any("popularity" in w for w in found):
        words.append("not above popularity")
    return "; ".join(words)


def run_demo(out: Path, *, epochs: int = 30, seed: int = 0, log: Callable[[str], None] = print) -> str:
    from dreamrec.data.synthetic import SyntheticConfig, bayes_optimal, generate

    t0 = time.time()
    data = generate(SyntheticConfig(seed=seed))
    ds = data.dataset
    data_dir = ds.save(Path(out) / "data")
    log(f"synthetic data: {ds.summary()}")
    results: list[tuple[str, dict[str, float], float]] = []
    for name in MODELS:
        cfg = RunConfig(
            model=name,
            params=DEMO_PARAMS.get(name, {}),
            train=TrainConfig(epochs=epochs, patience=3, batch_size=128, lr=2e-3, seed=seed, val_metric="NDCG@20"),
        )
        t = time.time()
        log(f"training {name} ...")
        with warnings.catch_warnings():  # the run's warnings go into the table, not to stderr
            warnings.simplefilter("ignore", RuntimeWarning)
            m = train_run(cfg, data_dir, Path(out) / name, progress=False, log=None, dataset=ds)
        results.append((name, m["test"], time.time() - t, _short_warnings(m.get("warnings", []))))
    bound = bayes_optimal(data, split="test")
    lines = [
        f"dreamrec demo: synthetic data ({ds.n_items} items, {len(ds.test)} test rows, protocol {ds.protocol}), "
        f"test split, full ranking",
        "",
        f"| {'model':<18} | {'HR@10':>7} | {'HR@20':>7} | {'NDCG@20':>7} | {'seconds':>7} | training's warnings |",
        f"|{'-' * 20}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|---|",
    ]
    for name, m, sec, warned in results:
        lines.append(f"| {name:<18} | {m['HR@10']:7.4f} | {m['HR@20']:7.4f} | {m['NDCG@20']:7.4f} | {sec:7.1f} | "
                     f"{warned} |")
    lines.append(
        f"| {'Bayes-optimal':<18} | {bound['HR@10']:7.4f} | {bound['HR@20']:7.4f} | {bound['NDCG@20']:7.4f} | {'':>7} | |"
    )
    lines.append("")
    lines.append(f"(Bayes-optimal: the expected metric of the true next-item distribution; total {time.time() - t0:.0f} s)")
    return "\n".join(lines)
