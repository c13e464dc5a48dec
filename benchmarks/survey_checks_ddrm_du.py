"""Issue 33, DDRM and Du et al. ("diffrec2"): measure the review's findings on the planted synthetic data.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/survey_checks_ddrm_du.py --label old \
        [--ddrm-params '{"start_weight": 0}'] [--du-params '{"rec_on": "embedding", "slot_norm": false}'] [--epochs 8]
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/survey_checks_ddrm_du.py --label zhihu \
        --ddrm-runs RUN [RUN ...] --data PREPARED_DATA     # the DDRM checks on trained runs, validation rows

Trains SASRec-CE, DDRM and Du et al. for ``--epochs`` epochs on the planted pattern of ``tests/conftest.py``
(``PLANTED_SMALL``: 10 topics of 10 items, flat popularity) with the planted tests' training settings and writes
``benchmarks/results/survey_checks/ddrm_du_{label}.json`` (and ``du_snr_{label}.png``):

* DDRM: test HR@20 of the generated query ``e``, of the encoder state ``e_0^u`` alone and of the history mean
  ``e_bar^i`` alone as queries; mean cos(e, e_bar^i) and cos(e, e_0^u) over the test histories, and how far the
  query moves when the encoder state is replaced by another row's (the history mean kept);
* Du et al.: on one training batch the MSE term, the rounding CE on the clean ``h_T^0`` and on ``f_theta``'s
  prediction, which of them the loss uses and the norm of its gradient on the denoiser's (Transformer's)
  weights; the signal-to-noise ratio of the noisy slot ``abar_n ||h_T^0||^2 / ((1 - abar_n) d)`` over n at
  initialisation and after training, and the number of steps where it exceeds 1;
* test HR@20 of every model and of popularity.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import PLANTED_SMALL  # noqa: E402

from dreamrec.config import TrainConfig  # noqa: E402
from dreamrec.data.batching import Batch  # noqa: E402
from dreamrec.data.synthetic import SyntheticConfig, generate  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.models import build_model  # noqa: E402
from dreamrec.train.trainer import train  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "survey_checks"


def _train(name: str, params: dict, ds, epochs: int):
    torch.manual_seed(0)
    model = build_model(name, ds.n_items, ds.max_len, params)
    if epochs == 0:  # --epochs 0: the model at initialisation (a cheap look at the loss terms and the SNR)
        return model.eval()
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=5e-3, patience=epochs, val_metric="HR@20", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, ds, cfg, Path(tmp), progress=False, log=lambda s: None)
    return model.eval()


def _hr20(model, ds) -> float:
    torch.manual_seed(0)
    return round(float(evaluate(model, ds.test, max_len=ds.max_len, ks=(20,))["HR@20"]), 4)


def _hr20_of_queries(q: torch.Tensor, keys: torch.Tensor, target: torch.Tensor) -> float:
    scores = q @ keys[1:].T
    top = scores.topk(20, dim=1).indices + 1
    return round(float((top == target[:, None]).any(1).float().mean()), 4)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b, dim=-1).mean()), 4)


def ddrm_checks(model, ds, split: str = "test") -> dict:
    rows = getattr(ds, split)
    h = torch.from_numpy(rows.history[:, -model.max_len :]).long()
    target = torch.from_numpy(rows.target).long()
    with torch.no_grad():
        torch.manual_seed(0)
        q = model.query(h)
        u, m = model.user_embedding(h), model.start_point(h)
        keys = model.item_embeddings()
        # the same reverse process with another row's encoder state as guidance (history mean kept)
        perm = torch.roll(torch.arange(h.shape[0]), 1)
        torch.manual_seed(0)
        T = model.scheduler.num_train_timesteps
        from dreamrec.diffusion import sample
        x_T = model.scheduler.add_noise(m, torch.randn_like(m), T - 1)
        q_swap = sample(lambda x, t: model.f_psi(x, t, u[perm]), model.scheduler, tuple(x_T.shape), x_T=x_T, mean_only=True)
    return {
        "hr20_query": _hr20_of_queries(q, keys, target),
        "hr20_encoder_state_alone": _hr20_of_queries(u, keys, target),
        "hr20_history_mean_alone": _hr20_of_queries(m, keys, target),
        "cos_query_history_mean": _cos(q, m),
        "cos_query_encoder_state": _cos(q, u),
        "cos_query_vs_query_with_other_rows_encoder_state": _cos(q, q_swap),
        "noise_std_at_T": round(float((1 - model.scheduler.alphas_cumprod[-1]).sqrt()), 4),
        "item_table_rms": round(float(model.item_embedding.weight[1:].detach().pow(2).mean().sqrt()), 4),
    }


def du_snr(model) -> list[float]:
    abar = model.scheduler.alphas_cumprod
    h0 = model.slot_vector(torch.arange(1, model.n_items + 1)) if hasattr(model, "slot_vector") \
        else model.item_embedding.weight[1:]
    power = float(h0.detach().pow(2).sum(-1).mean())
    d = h0.shape[1]
    return [round(float(a * power / ((1 - a) * d)), 6) for a in abar]


def du_checks(model, ds) -> dict:
    model.train()
    n = 256
    # the first validation rows as one batch, in training mode (the loss terms as training computes them)
    batch = Batch(history=torch.from_numpy(ds.val.history[:n, -model.max_len :]).long(),
                  target=torch.from_numpy(ds.val.target[:n]).long())
    torch.manual_seed(0)
    e_v = model.slot_vector(batch.target) if hasattr(model, "slot_vector") else model.item_embedding(batch.target)
    t = model.scheduler.sample_timesteps(n)
    f = model.denoise(batch.history, model.scheduler.add_noise(e_v, torch.randn_like(e_v), t), t)
    mse = (e_v - f).square().sum(-1).mean()
    ce_clean = F.cross_entropy(model.rounding(e_v), batch.target - 1)
    ce_pred = F.cross_entropy(model.rounding(f), batch.target - 1)
    weights = [p for name, p in model.encoder.named_parameters() if "layers" in name or "blocks" in name]
    if not weights:
        weights = [p for name, p in model.encoder.named_parameters() if "item_embedding" not in name]

    def grad_norm(term: torch.Tensor) -> float:
        grads = torch.autograd.grad(term, weights, retain_graph=True, allow_unused=True)
        return round(float(sum(g.pow(2).sum() for g in grads if g is not None) ** 0.5), 6)

    # the rounding term the model's own loss uses: the loss minus its MSE term
    torch.manual_seed(0)
    total = model.loss(batch)
    rec_used = total - model.config.mse_weight * mse
    model.eval()
    return {
        "rec_on": model.config.rec_on,
        "mse": round(float(mse), 4),
        "ce_on_clean_h0": round(float(ce_clean), 4),
        "ce_on_prediction": round(float(ce_pred), 4),
        "rec_term_in_loss": round(float(rec_used), 4),
        "grad_norm_on_denoiser_of_mse": grad_norm(mse),
        "grad_norm_on_denoiser_of_loss_rec_term": grad_norm(rec_used),
        "grad_norm_on_denoiser_of_ce_on_prediction": grad_norm(ce_pred),
    }


def trained_ddrm_checks(runs: list[Path], data: Path, label: str) -> None:
    """The DDRM checks on trained runs (e.g. the Zhihu survey seeds), on the validation rows of ``data``; writes
    ``ddrm_{label}.json``."""
    from dreamrec.data.dataset import PreparedDataset
    from dreamrec.train.run import load_run

    ds = PreparedDataset.load(data)
    pop = build_model("popularity", ds.n_items, ds.max_len)
    pop.fit_statistics(ds)
    res: dict = {"data": str(data), "split": "val", "n_rows": len(ds.val),
                 "hr20_popularity": round(float(evaluate(pop, ds.val, max_len=ds.max_len, ks=(20,))["HR@20"]), 4),
                 "runs": {}}
    for run in runs:
        model = load_run(run).model.eval()
        res["runs"][str(run)] = ddrm_checks(model, ds, "val")
        print(run, json.dumps(res["runs"][str(run)]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ddrm_{label}.json").write_text(json.dumps(res, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--ddrm-params", default="{}")
    ap.add_argument("--du-params", default='{"sampler": "onestep", "step_everywhere": false}')
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], choices=["sasrec", "ddrm", "du"])
    ap.add_argument("--ddrm-runs", nargs="*", type=Path, default=[],
                    help="trained DDRM run directories: run the DDRM checks on their validation rows instead")
    ap.add_argument("--data", type=Path, help="the prepared dataset the --ddrm-runs were trained on")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.ddrm_runs:
        return trained_ddrm_checks(args.ddrm_runs, args.data, args.label)
    ds = generate(SyntheticConfig(**PLANTED_SMALL)).dataset
    pop = build_model("popularity", ds.n_items, ds.max_len)
    pop.fit_statistics(ds)
    res: dict = {"data": PLANTED_SMALL, "epochs": args.epochs, "hr20_popularity": _hr20(pop, ds)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"ddrm_du_{args.label}.json"
    if "sasrec" not in args.skip:
        res["hr20_sasrec_ce"] = _hr20(_train("sasrec", {"loss": "ce"}, ds, args.epochs), ds)
    if "ddrm" not in args.skip:
        ddrm_params = json.loads(args.ddrm_params)
        ddrm = _train("ddrm", ddrm_params, ds, args.epochs)
        res["ddrm"] = {"params": ddrm_params, "hr20": _hr20(ddrm, ds), **ddrm_checks(ddrm, ds)}
        path.write_text(json.dumps(res, indent=1) + "\n")  # partial results first
    if "du" not in args.skip:
        du_params = json.loads(args.du_params)
        torch.manual_seed(0)
        du0 = build_model("diffrec2", ds.n_items, ds.max_len, du_params)
        snr0 = du_snr(du0)
        du = _train("diffrec2", du_params, ds, args.epochs)
        snr = du_snr(du)
        res["du"] = {
            "params": du_params, "hr20": _hr20(du, ds), **du_checks(du, ds),
            "snr_init_steps_above_1": sum(s > 1 for s in snr0), "snr_trained_steps_above_1": sum(s > 1 for s in snr),
            "snr_init": snr0, "snr_trained": snr,
        }
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.semilogy(range(1, len(snr0) + 1), snr0, label="init")
            ax.semilogy(range(1, len(snr) + 1), snr, label=f"after {args.epochs} epochs")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("diffusion step n")
            ax.set_ylabel("SNR of the noisy slot")
            ax.set_title(f"Du et al. ({args.label})")
            ax.legend()
            fig.tight_layout()
            OUT.mkdir(parents=True, exist_ok=True)
            fig.savefig(OUT / f"du_snr_{args.label}.png", dpi=110)
        except ImportError:
            pass
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "du"} | {"du": {k: v for k, v in res.get("du", {}).items()
                                                                          if not k.startswith("snr_init") and k != "snr_trained"}}, indent=1))


if __name__ == "__main__":
    main()
