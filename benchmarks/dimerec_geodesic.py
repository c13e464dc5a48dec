"""DimeRec's forward process on the sphere and its reverse pass, before and after the fix of issue 33.

    python benchmarks/dimerec_geodesic.py [--d 64] [--T 100] [--n 500] [--seed 0] [--out benchmarks/results/dimerec]

Forward (Algorithm 1, line 10), ``cos(x_t, x0)`` against ``t`` for ``n`` random unit ``x0`` and the same
Gaussian ``eps`` under each process (``eps_tan`` its tangent part at ``x0``, of norm ``~ sqrt(d - 1)``):

* old: ``x_t = exp_{x0}[sqrt(1 - abar_t) eps_tan]``: the geodesic angle ``sqrt(1 - abar_t) |eps_tan|`` runs past
  ``pi`` and ``x_t`` wraps back onto ``x0``;
* new (the model since issue 33, :func:`dreamrec.models.dimerec.q_sample_sphere`):
  ``x_t = exp_{x0}[theta_t eps_tan / |eps_tan|]``, ``theta_t = arctan(sqrt((1 - abar_t) / abar_t) |eps_tan|)``,
  i.e. ``L2-Norm(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_tan)``;
* unit (issue 33's first proposal, tried and not adopted): ``theta_t = arccos(sqrt(abar_t))`` on the unit
  direction ``eps_tan / |eps_tan|``, i.e. ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_tan / |eps_tan|``.

Reverse (Algorithm 2, line 6) with a perfect predictor ``x0_hat = x0`` (the best any denoiser can do), DDPM over
all ``T`` steps from ``x_T`` uniform on the sphere, ``x_{t-1} = L2-Norm(mu~_t(x_t, x0_hat) + sigma_t eps')``:
the norm of the update before ``L2-Norm``, of the noise term alone, and ``cos(x_{t-1}, x0)`` along the way, to set
against the forward's ``cos(x_{t-1}, x0)``: the denoiser only ever saw the forward's ``x_t``, so a reverse pass
whose ``x_t`` do not look like them feeds it inputs it was not trained on.

* per_coordinate (Algorithm 2, the model before and after issue 33): ``eps' ~ N(0, I_d)``, norm ``sigma_t sqrt(d)``;
* unit (paired with the ``unit`` forward, not adopted): ``eps' ~ N(0, I_d / d)``, ``E |eps'|^2 = 1``.

Writes ``geodesic.json`` and ``geodesic.png`` to ``--out``. CPU, seconds.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamrec.diffusion import DiffusionScheduler
from dreamrec.models.dimerec import q_sample_sphere, sphere_exp, tangent_noise


def old_forward(x0: torch.Tensor, abar_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The forward process before the fix: tangent Gaussian of norm ~ sqrt(d - 1) scaled by sqrt(1 - abar_t)."""
    return sphere_exp(x0, (1 - abar_t).sqrt() * tangent_noise(x0, eps))


def unit_forward(x0: torch.Tensor, abar_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Issue 33's first proposal: angle arccos(sqrt(abar_t)) on the unit tangent direction."""
    v = tangent_noise(x0, eps)
    return sphere_exp(x0, torch.arccos(abar_t.sqrt()) * v / v.norm(dim=-1, keepdim=True))


def summary(v: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95]))
    return {"mean": v.mean().item(), "q05": q[0].item(), "median": q[1].item(), "q95": q[2].item()}


def forward(sched: DiffusionScheduler, x0: torch.Tensor, seed: int) -> dict[str, list]:
    out: dict[str, list] = {"t": [], "old": [], "new": [], "unit": [], "old_angle": [], "new_angle": []}
    T = sched.num_train_timesteps
    gen = torch.Generator().manual_seed(seed + 1)  # x0 is drawn from seed: eps must not repeat it
    for t in range(T):  # index t is the paper's step t + 1
        eps = torch.randn(x0.shape, generator=gen)
        abar = sched.alphas_cumprod[t].expand(x0.shape[0], 1)
        for name, fn in (("old", old_forward), ("new", q_sample_sphere), ("unit", unit_forward)):
            x_t = fn(x0, abar, eps)
            cos = (x_t * x0).sum(-1).clamp(-1, 1)
            out[name].append(summary(cos))
            if name != "unit":
                out[f"{name}_angle"].append(summary(torch.arccos(cos)))  # the geodesic distance, in [0, pi]
        out["t"].append(t + 1)
    return out


def reverse(sched: DiffusionScheduler, x0: torch.Tensor, seed: int, noise_scale: float) -> dict[str, list]:
    """DDPM with x0_hat = x0; records, for every step t -> t-1, the update's norm before L2-Norm, the noise
    term's norm and cos(x_{t-1}, x0) after it."""
    gen = torch.Generator().manual_seed(seed + 2)
    x_t = F.normalize(torch.randn(x0.shape, generator=gen), dim=-1)
    rec: dict[str, list] = {"t": [], "update_norm": [], "noise_norm": [], "cos_prev": []}
    for t in sched.timesteps.tolist():
        noise = torch.randn(x0.shape, generator=gen) * noise_scale
        mean = sched.step(x0, t, x_t, noise=torch.zeros_like(x_t))
        update = sched.step(x0, t, x_t, noise=noise)
        x_t = F.normalize(update, dim=-1)
        rec["t"].append(t + 1)
        rec["update_norm"].append(summary(update.norm(dim=-1)))
        rec["noise_norm"].append(summary((update - mean).norm(dim=-1)))
        rec["cos_prev"].append(summary((x_t * x0).sum(-1)))
    return rec


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fw, rv = result["forward"], result["reverse"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, colour in (("old", "tab:red"), ("new", "tab:blue"), ("unit", "tab:green")):
        ax.plot(fw["t"], [s["mean"] for s in fw[name]], color=colour, label=f"{name} forward (mean)")
        ax.fill_between(fw["t"], [s["q05"] for s in fw[name]], [s["q95"] for s in fw[name]], color=colour, alpha=0.2)
    ax.set(xlabel="t", ylabel="cos(x_t, x0)", title=f"forward, d={result['d']}, T={result['T']} (5-95 %)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    ax = axes[1]
    for name, colour in (("per_coordinate", "tab:blue"), ("unit", "tab:green")):
        r = rv[name]
        ax.plot([t - 1 for t in r["t"]], [s["mean"] for s in r["cos_prev"]], color=colour,
                label=f"reverse eps' {name}, x0_hat = x0")
    for name, colour in (("old", "tab:red"), ("new", "tab:blue"), ("unit", "tab:green")):
        ax.plot(fw["t"], [s["mean"] for s in fw[name]], color=colour, ls=":", label=f"{name} forward")
    ax.set(xlabel="t", ylabel="cos(x_t, x0)", title="reverse (DDPM, perfect predictor) vs forward")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dimerec")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sched = DiffusionScheduler(num_train_timesteps=args.T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                               prediction_type="x0")
    sched.set_timesteps(None, sampler="ddpm")
    x0 = F.normalize(torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(args.seed)), dim=-1)
    result = {
        "d": args.d, "T": args.T, "n": args.n, "seed": args.seed, "schedule": "linear 1e-4..0.02 (DimeRec defaults)",
        "forward": forward(sched, x0, args.seed),
        "reverse": {"per_coordinate": reverse(sched, x0, args.seed, 1.0),
                    "unit": reverse(sched, x0, args.seed, 1 / math.sqrt(args.d))},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "geodesic.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "geodesic.png")
    fw = result["forward"]
    print("t     forward cos(x_t, x0): old    new   unit | reverse: per_coordinate  unit")
    rev = {k: {t: s["mean"] for t, s in zip(v["t"], v["cos_prev"])} for k, v in result["reverse"].items()}
    for t in (1, 2, 5, 10, 20, 30, 40, 50, 60, 80, 100):
        i = t - 1
        r_pc, r_unit = rev["per_coordinate"].get(t + 1, float("nan")), rev["unit"].get(t + 1, float("nan"))
        print(f"{t:3d}  {fw['old'][i]['mean']:+.3f}  {fw['new'][i]['mean']:+.3f}  {fw['unit'][i]['mean']:+.3f} |"
              f"  {r_pc:+.3f}  {r_unit:+.3f}")
    for k, v in result["reverse"].items():
        update = sorted(s["median"] for s in v["update_norm"])
        noise = [s["median"] for s in v["noise_norm"]]
        print(k, f"update norm before L2-Norm: median over steps {update[len(update) // 2]:.3f},",
              f"range {update[0]:.3f}-{update[-1]:.3f}; noise norm range {min(noise):.3f}-{max(noise):.3f}")


if __name__ == "__main__":
    main()
