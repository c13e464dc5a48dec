"""Is DiffRec's squared error what holds it below L-DiffRec on Zhihu? The same row with a multinomial loss.

    python benchmarks/experiments/diffrec/multinomial_probe.py --data DATA_DIR --config CONFIG --out RUN_DIR
        [--seed 0] [--threads 1] [--name NAME]

Trains the DiffRec row's config with ONE change: Algorithm 1's per-row squared error ``mean_i (x0_hat_i - x0_i)^2``
is replaced by the multinomial negative log-likelihood ``-sum_i x0_i log softmax(x0_hat)_i`` (the loss of
L-DiffRec's decoders and of Mult-VAE), with the same step sampling and Eq. 11 weights. Not DiffRec's method: a probe
of the lead in ``benchmarks/experiments/diffrec/NOTES.md`` (L-DiffRec's autoencoder, trained with that likelihood,
does most of its ranking). Selection on validation and the test ranking follow the config (``exclude_seen``).

Writes ``RUN_DIR`` (weights, log) and ``benchmarks/results/survey_checks/NAME.json``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.config import apply_overrides, build_run_config, load_yaml
from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.evaluate import evaluate
from dreamrec.eval.report import command_line, machine
from dreamrec.models import build_model
from dreamrec.train.trainer import seed_everything, train

OUT = ROOT / "results" / "survey_checks"


def multinomial_diffusion_loss(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffRec's ``diffusion_loss`` with the per-row squared error replaced by the multinomial NLL."""
    t, p_t = self.sample_steps(x0.shape[0], x0.device)
    x_t = self.scheduler.add_noise(x0, torch.randn_like(x0), t)
    x0_hat = self.denoiser(x_t, t)
    nll = -(F.log_softmax(x0_hat, dim=-1) * x0).sum(1)
    L_t = nll * self.loss_weights[t] if self.config.reweight else nll
    if self.training and self.config.t_sampling == "importance":
        self._record(t, L_t.detach())
    return (L_t / (self.config.timesteps * p_t)).mean(), x0_hat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    raw = apply_overrides(load_yaml(args.config), [f"train.seed={args.seed}", f"train.threads={args.threads}"])
    cfg = build_run_config(raw, str(args.config))
    if cfg.model != "diffrec" or cfg.params.get("latent_clusters"):
        raise SystemExit(f"{args.config}: expected a DiffRec (not L-DiffRec) config")
    dataset = PreparedDataset.load(args.data)
    max_len = cfg.train.max_len or dataset.max_len
    seed_everything(args.seed)
    model = build_model(cfg.model, dataset.n_items, max_len, cfg.params)
    model.diffusion_loss = types.MethodType(multinomial_diffusion_loss, model)
    tcfg = cfg.train.model_copy(update={"max_len": max_len})
    r = train(model, dataset, tcfg, args.out, resume=(args.out / "checkpoint").is_dir(), progress=False, log=print)
    model.eval()
    test = evaluate(model, dataset.test, ks=(20,), seed=args.seed, exclude_seen=tcfg.exclude_seen)
    name = args.name or f"diffrec-multinomial-zhihu-seed{args.seed}"
    result = {"config": str(args.config), "change": "squared error -> multinomial NLL", "seed": args.seed,
              "best_epoch": r.best_epoch, "epochs_trained": len(r.history),
              "val": {k: r.best_val[k] for k in ("HR@20", "NDCG@20")},
              "test": {k: test[k] for k in ("HR@20", "NDCG@20")},
              "command": command_line(), "machine": machine(),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
