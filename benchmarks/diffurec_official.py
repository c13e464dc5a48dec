"""DiffuRec / DiffuRecSys side by side with the authors' code, on the same data, seed and epochs.

    python benchmarks/diffurec_official.py --whuir /path/to/DiffuRec --diffurecsys /path/to/DiffuRecSys \\
        --pkl beauty.pkl --epochs 20 --work /work/runs/diffurec_official/e20 --name beauty-e20
    # smoke: two epochs on 500 users (the same users for both), one thread
    python benchmarks/diffurec_official.py --whuir ... --diffurecsys ... --pkl beauty.pkl \\
        --epochs 2 --max-users 500 --threads 1 --name smoke --work /tmp/official-smoke
    # seconds per training batch (full width, the real catalog), both sides, no training run
    python benchmarks/diffurec_official.py --whuir ... --diffurecsys ... --pkl beauty.pkl --time-batches 5

``--whuir`` is a checkout of github.com/WHUIR/DiffuRec (its ``src/`` modules are imported as they
are; nothing of it is copied here), ``--diffurecsys`` one of github.com/shararezr/DiffuRecSys (HEAD,
or its commit 9037d2b for the offset noise). Either may be left out. Each side runs in its own
subprocess (the two checkouts have modules of the same names) with ``--threads`` torch threads.

The harness drives their modules with their ``main.py`` defaults (DiffuRec: d 128, window 50;
DiffuRecSys: d 256, window 100, weight decay 1e-4), their data loaders, loss (``loss_diffu_ce``),
Adam and StepLR, as their ``model_train`` does, but validates after EVERY epoch with their metric code
(per-batch means of ``hrs_and_ndcgs_k``, padding column ranked) so the curves can be compared; ours
runs ``configs/diffurec/<dataset>.yaml`` / ``configs/diffurecsys/<dataset>.yaml`` with
``eval_every 1`` (our metrics: per-user means, padding never ranked). ``--max-users N`` keeps the same
N users (drawn with ``--seed``, renumbered 0..N-1, the full item catalog) for both sides.

Resumable: a stopped invocation, run again with the same arguments, continues both sides after their last finished
epoch (theirs from ``<work>/official-<side>.state.pt``, ours from its run folder's checkpoint), so a 20-epoch run can
span several sessions.

Writes ``<name>.json`` (settings, machine, per-epoch training loss, validation HR@20 / NDCG@20 and
seconds of both implementations) and ``<name>.png`` (validation HR@20, NDCG@20 and training loss per
epoch) to ``--out`` (default ``benchmarks/results/diffurec_official/``); run folders go to ``--work``.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "diffurec_official"
# the two implementations: their main.py defaults, and our config of the same code
SIDES = {
    "whuir": {"label": "DiffuRec", "model": "diffurec", "src": "src", "modules": ("utils", "model", "trainer"),
              "args": {"hidden_size": 128, "max_len": 50, "weight_decay": 0.0, "decay_step": 100}},
    "diffurecsys": {"label": "DiffuRecSys", "model": "diffurecsys", "src": ".",
                    "modules": ("tools", "model", "training"),
                    "args": {"hidden_size": 256, "max_len": 100, "weight_decay": 1e-4, "decay_step": 30}},
}
COMMON_ARGS = {"dropout": 0.1, "emb_dropout": 0.3, "num_blocks": 4, "batch_size": 512, "lr": 1e-3, "gamma": 0.1,
               "optimizer": "Adam", "momentum": None, "schedule_sampler_name": "lossaware", "diffusion_steps": 32,
               "lambda_uncertainty": 0.001, "noise_schedule": "trunc_lin", "rescale_timesteps": True,
               "device": "cpu", "num_gpu": 1, "metric_ks": [5, 10, 20]}


def subsample(pkl: Path, max_users: int | None, seed: int, out: Path) -> Path:
    """``pkl`` itself, or a copy with ``max_users`` users drawn with ``seed`` (renumbered 0..N-1 in their
    original order; every item kept, so both sides rank the same catalog)."""
    if max_users is None:
        return pkl
    with pkl.open("rb") as f:
        data = pickle.load(f)
    users = sorted(data["train"])
    keep = sorted(np.random.default_rng(seed).choice(len(users), size=min(max_users, len(users)), replace=False))
    chosen = [users[i] for i in keep]
    sub = {name: {new: data[name][old] for new, old in enumerate(chosen)} for name in ("train", "val", "test")}
    sub["umap"] = {old: new for new, old in enumerate(chosen)}
    sub["smap"] = data["smap"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        pickle.dump(sub, f)
    return out


# -- their code, in a subprocess ----------------------------------------------------------------
def official_worker(side: str, checkout: Path, pkl: Path, epochs: int, seed: int, threads: int,
                    time_batches: int | None, check: bool = False, device: str = "cpu",
                    state_file: Path | None = None) -> dict[str, Any]:
    """Train their model as their ``model_train`` (trainer.py:90-110), validating after every epoch.

    With ``state_file`` the run is resumable: after every epoch their model, Adam, StepLR, their timestep sampler
    and the Python, NumPy and torch random states are saved there (written to a temporary file, then renamed), and a
    run that finds the file continues after its last epoch with the same random streams as an uninterrupted run."""
    import random
    from argparse import Namespace

    import torch

    spec = SIDES[side]
    if "int" not in np.__dict__:  # their step_sample.py uses np.int, removed in NumPy 1.24: the builtin it aliased
        np.int = int  # type: ignore[attr-defined]
    sys.path.insert(0, str((checkout / spec["src"]).resolve()))
    data_mod, model_mod, train_mod = (__import__(m) for m in spec["modules"])
    torch.set_num_threads(threads)
    random.seed(seed)  # their fix_random_seed_as
    torch.manual_seed(seed)
    np.random.seed(seed)
    with pkl.open("rb") as f:
        data = pickle.load(f)
    args = Namespace(**(COMMON_ARGS | {"device": device}), **spec["args"], item_num=len(data["smap"]))
    train_loader = data_mod.Data_Train(data["train"], args).get_pytorch_dataloaders()
    val_loader = data_mod.Data_Val(data["train"], data["val"], args).get_pytorch_dataloaders()
    model = model_mod.Att_Diffuse_model(model_mod.create_model_diffu(args), args).to(device)
    optimizer = train_mod.optimizers(model, args)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.decay_step, gamma=args.gamma)
    if check:
        return check_equivalence(side, model, args, val_loader, seed)
    if time_batches:
        return {"seconds_per_batch": _time_official(model, optimizer, train_loader, time_batches),
                "n_batches_per_epoch": len(train_loader)}
    epochs_out: list[dict[str, Any]] = []
    if state_file is not None and state_file.exists():
        saved = torch.load(state_file, map_location=device, weights_only=False)  # our own file, written below
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        model.diffu.schedule_sampler = saved["schedule_sampler"]
        random.setstate(saved["random"])
        np.random.set_state(saved["numpy"])
        torch.set_rng_state(saved["torch"])
        epochs_out = saved["epochs"]
        print(f"resuming after epoch {len(epochs_out)}", file=sys.stderr, flush=True)
    for epoch in range(len(epochs_out) + 1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for seq, tag in train_loader:
            seq, tag = seq.to(device), tag.to(device)
            optimizer.zero_grad()
            _, rep, *_ = model(seq, tag, train_flag=True)
            loss = model.loss_diffu_ce(rep, tag)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        t_train = time.perf_counter() - t0
        model.eval()
        per_batch: dict[str, list[float]] = {}
        with torch.no_grad():
            for seq, tag in val_loader:
                seq, tag = seq.to(device), tag.to(device)
                _, rep, *_ = model(seq, tag, train_flag=False)
                for k, v in train_mod.hrs_and_ndcgs_k(model.diffu_rep_pre(rep), tag, args.metric_ks).items():
                    per_batch.setdefault(k, []).append(v)
        val = {k: float(np.mean(v)) for k, v in per_batch.items()}
        epochs_out.append({"epoch": epoch, "loss": float(np.mean(losses)), "last_batch_loss": losses[-1],
                           "val": val, "seconds_train": t_train, "seconds": time.perf_counter() - t0})
        print(json.dumps(epochs_out[-1]), file=sys.stderr, flush=True)
        if state_file is not None:
            tmp = state_file.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "schedule_sampler": model.diffu.schedule_sampler,
                        "random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                        "epochs": epochs_out}, tmp)
            os.replace(tmp, state_file)
    return {"epochs": epochs_out, "n_batches_per_epoch": len(train_loader)}


# -- numerical check: their network and ours with the same weights and lambda draws -------------------
def _their_to_ours(side: str, theirs: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    """Their state dict -> ours (names and the fused q/k/v of our self-attention)."""
    import torch

    x = "diffu.xstart_model."
    out = {"item_embedding.weight": theirs["item_embeddings.weight"], "emb_norm.weight": theirs["LayerNorm.weight"],
           "emb_norm.bias": theirs["LayerNorm.bias"]}
    for i in (0, 2):
        for w in ("weight", "bias"):
            out[f"approximator.time_mlp.{i}.{w}"] = theirs[f"{x}time_embed.{i}.{w}"]
    for w in ("weight", "bias"):
        out[f"approximator.out_norm.{w}"] = theirs[f"{x}norm_diffu_rep.{w}"]
    attn_name = "attention" if side == "whuir" else "MU"
    for b in range(n_blocks):
        src, dst = f"{x}att.transformer_blocks.{b}.", f"approximator.blocks.{b}."
        for w in ("weight", "bias"):
            out[f"{dst}attn.qkv.{w}"] = torch.cat([theirs[f"{src}{attn_name}.linear_layers.{j}.{w}"] for j in range(3)])
            out[f"{dst}attn.out.{w}"] = theirs[f"{src}{attn_name}.w_layer.{w}"]
            out[f"{dst}ffn.fc1.{w}"] = theirs[f"{src}feed_forward.w_1.{w}"]
            out[f"{dst}ffn.fc2.{w}"] = theirs[f"{src}feed_forward.w_2.{w}"]
            out[f"{dst}norm1.{w}"] = theirs[f"{src}input_sublayer.norm.{w}"]
            out[f"{dst}norm2.{w}"] = theirs[f"{src}output_sublayer.norm.{w}"]
            if side == "diffurecsys":
                for j, name in enumerate(("q", "k", "v")):
                    out[f"{dst}cross.{name}.{w}"] = theirs[f"{src}CA.linear_layers.{j}.{w}"]
                out[f"{dst}cross.out.{w}"] = theirs[f"{src}CA.w_layer.{w}"]
    return out


CHECK_ROWS = 128  # validation rows compared by --check (their reverse process of DiffuRecSys is slow on a CPU)


def check_equivalence(side: str, model: Any, args: Any, loader: Any, seed: int) -> dict[str, Any]:
    """Copy their weights into our model, fix lambda to the same draw on both sides, and compare (eval mode):
    the history representations, ``x0_hat`` of the approximator and the training loss given ``x0_hat``."""
    import torch

    import dreamrec.nn.approximators as ours_apx
    import dreamrec.nn.diffurecsys as ours_sys
    from dreamrec.models import build_model

    params = {"hidden": args.hidden_size, "n_blocks": args.num_blocks, "n_heads": 4, "dropout": args.dropout,
              "emb_dropout": args.emb_dropout, "delta": args.lambda_uncertainty, "timesteps": args.diffusion_steps}
    if side == "whuir":
        params.update(official_padding=True, block_dropout=True, layer_norm_eps=1e-12, gelu="tanh", init="xavier",
                      reverse_variance="beta", trim_padding=False)
    ours = build_model(SIDES[side]["model"], args.item_num, args.max_len, params)
    mapped = _their_to_ours(side, model.state_dict(), args.num_blocks)
    missing = set(ours.state_dict()) - set(mapped)
    ours.load_state_dict(mapped, strict=True)
    model.eval()
    ours.eval()
    seq, tag = (x[:CHECK_ROWS] for x in next(iter(loader)))
    torch.manual_seed(seed)
    lam = args.lambda_uncertainty + args.lambda_uncertainty * torch.randn(seq.shape[0], seq.shape[1], args.hidden_size)
    real_normal = torch.normal
    torch.normal = lambda mean, std, *a, **k: lam.clone()  # their lambda draw (diffurec.py:316 / :397)
    ours_apx.sample_lambda = ours_sys.sample_lambda = lambda shape, delta, **k: lam.clone()
    try:
        with torch.no_grad():
            e_theirs = model.LayerNorm(model.embed_dropout(model.item_embeddings(seq)))
            e_ours, valid = ours.history_representation(seq)
            x_t = torch.randn(seq.shape[0], args.hidden_size)
            t = torch.randint(0, args.diffusion_steps, (seq.shape[0],))
            x0_theirs, _ = model.diffu.xstart_model(e_theirs, x_t, model.diffu._scale_timesteps(t), (seq > 0).float())
            x0_ours = ours.approximator(e_ours, valid, x_t, t)
            loss_theirs = model.loss_diffu_ce(x0_theirs, tag)
            loss_ours = torch.nn.functional.cross_entropy(x0_ours @ ours.item_embedding.weight.T, tag.squeeze(-1))
            # the whole reverse process (32 steps, beta_t variance): the same x_T and step noises from the same seed
            torch.manual_seed(seed + 1)
            rev_theirs = model(seq, tag, train_flag=False)[1]
            torch.manual_seed(seed + 1)
            rev_ours = ours.reverse(seq)
    finally:
        torch.normal = real_normal
    def top20(x: torch.Tensor) -> torch.Tensor:
        return torch.topk(x @ ours.item_embedding.weight.T, 20).indices

    return {"unmapped_params_of_ours": sorted(missing), "rows": int(seq.shape[0]),
            "max_abs_diff_history": float((e_theirs - e_ours).abs().max()),
            "max_abs_diff_x0_hat": float((x0_theirs - x0_ours).abs().max()),
            "max_abs_x0_hat": float(x0_theirs.abs().max()),
            "loss_theirs": float(loss_theirs), "loss_ours": float(loss_ours),
            "max_abs_diff_reversed_x0": float((rev_theirs - rev_ours).abs().max()),
            "max_abs_reversed_x0": float(rev_theirs.abs().max()),
            "top20_same_items": float((top20(rev_theirs) == top20(rev_ours)).float().mean())}


def _time_official(model: Any, optimizer: Any, loader: Any, k: int) -> float:
    model.train()
    it = iter(loader)
    times = []
    for _ in range(k + 1):  # the first step warms up
        seq, tag = next(it)
        t0 = time.perf_counter()
        optimizer.zero_grad()
        _, rep, *_ = model(seq, tag, train_flag=True)
        model.loss_diffu_ce(rep, tag).backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def run_official(side: str, checkout: Path, pkl: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.work) / f"official-{side}.json"
    cmd = [sys.executable, __file__, "--official-worker", side, "--checkout", str(checkout), "--pkl", str(pkl),
           "--epochs", str(a.epochs), "--seed", str(a.seed), "--threads", str(a.threads), "--worker-out", str(out)]
    if a.time_batches:
        cmd += ["--time-batches", str(a.time_batches)]
    if a.check:
        cmd += ["--check"]
    elif not a.time_batches:  # a training run: resumable epoch by epoch
        cmd += ["--state-file", str(Path(a.work) / f"official-{side}.state.pt")]
    cmd += ["--device", a.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "PYTHONPATH": str(ROOT / "src")}  # --check imports dreamrec beside their modules
    subprocess.run(cmd, check=True, env=env, cwd=str(checkout))
    return json.loads(out.read_text())


# -- ours ---------------------------------------------------------------------------------------
def our_config(side: str, dataset: str, variant: str | None, a: argparse.Namespace) -> Any:
    from dreamrec.config import apply_overrides, build_run_config, load_yaml

    folder = SIDES[side]["model"]
    path = ROOT / "configs" / folder / (f"{dataset}-{variant}.yaml" if variant else f"{dataset}.yaml")
    sets = [f"train.epochs={a.epochs}", "train.eval_every=1", "train.eval_offset=0", "train.patience=100000",
            f"train.seed={a.seed}", f"train.threads={a.threads}", f"train.device={a.device}"]
    return build_run_config(apply_overrides(load_yaml(path), sets), str(path)), path


def run_ours(side: str, pkl: Path, a: argparse.Namespace, variant: str | None = None) -> dict[str, Any]:
    import torch

    from dreamrec.data.published import load_diffurec_pkl
    from dreamrec.train.run import train_run

    torch.set_num_threads(a.threads)
    cfg, path = our_config(side, a.dataset, variant, a)
    width = cfg.train.max_len or 50
    ds = load_diffurec_pkl(pkl, max_len=width)
    if a.time_batches:
        return {"seconds_per_batch": _time_ours(cfg, ds, a.time_batches), "config": str(path.relative_to(ROOT))}
    run_dir = Path(a.work) / f"ours-{side}{'-' + variant if variant else ''}"
    t0 = time.perf_counter()
    if (run_dir / "metrics.json").exists():  # finished in an earlier invocation
        test = json.loads((run_dir / "metrics.json").read_text())
    else:  # resumed from its checkpoint when an earlier invocation was stopped
        resume = (run_dir / "checkpoint").is_dir()
        test = train_run(cfg, Path(a.work) / f"data-{width}", run_dir, dataset=ds, progress=False, log=None,
                         resume=resume, overwrite=run_dir.exists() and not resume)
    epochs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"config": str(path.relative_to(ROOT)), "run_dir": str(run_dir), "seconds_total": time.perf_counter() - t0,
            "epochs": [{"epoch": e["epoch"], "loss": e["loss"], "val": e.get("val"), "seconds": e["seconds"]}
                       for e in epochs], "test": test.get("test", test)}


def _time_ours(cfg: Any, ds: Any, k: int) -> float:
    import torch

    from dreamrec.models import build_model
    from dreamrec.train.trainer import batches, make_optimizer, seed_everything, train_step

    seed_everything(cfg.train.seed)
    width = cfg.train.max_len or ds.max_len
    model = build_model(cfg.model, ds.n_items, width, cfg.params)
    model.train()
    optimizer = make_optimizer(model, cfg.train)
    it, _ = batches(model, ds, cfg.train.batch_size, width, np.random.default_rng(cfg.train.seed))
    times = []
    for _ in range(k + 1):
        batch = next(it)
        t0 = time.perf_counter()
        train_step(model, batch, optimizer, cfg.train, torch.device("cpu"))
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


# -- report -------------------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (title, key), ax in zip([("validation HR@20", "HR@20"), ("validation NDCG@20", "NDCG@20"),
                                 ("training loss (epoch mean)", "loss")], axes):
        for name, curve in result["curves"].items():
            pts = [(e["epoch"], e["loss"] if key == "loss" else (e.get("val") or {}).get(key)) for e in curve]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, linestyle="--" if name.startswith("official") else "-")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['name']}: ours vs the authors' code ({result['settings']['users']} users, "
                 f"seed {result['settings']['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whuir", type=Path, help="checkout of github.com/WHUIR/DiffuRec")
    p.add_argument("--diffurecsys", type=Path, help="checkout of github.com/shararezr/DiffuRecSys")
    p.add_argument("--pkl", type=Path, required=True, help="the DiffuRec split (e.g. beauty.pkl)")
    p.add_argument("--dataset", default="beauty", help="our config name: configs/<model>/<dataset>.yaml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-users", type=int, default=None, help="the same random N users on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda, for both sides (not with --time-batches / --check)")
    p.add_argument("--time-batches", type=int, default=None, help="only time K training batches per side")
    p.add_argument("--check", action="store_true", help="only compare their network and ours on one validation "
                   "batch with the same weights and lambda draws (eval mode)")
    p.add_argument("--fast", action="store_true", help="also time/run our fast variant (<dataset>-fast.yaml)")
    p.add_argument("--work", default="/tmp/diffurec_official")
    p.add_argument("--name", default="beauty")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--official-worker", choices=list(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--state-file", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.official_worker:
        res = official_worker(a.official_worker, a.checkout, a.pkl, a.epochs, a.seed, a.threads, a.time_batches,
                              a.check, a.device, a.state_file)
        a.worker_out.write_text(json.dumps(res))
        return
    from dreamrec.eval.report import command_line, machine

    Path(a.work).mkdir(parents=True, exist_ok=True)
    pkl = subsample(a.pkl.resolve(), a.max_users, a.seed, Path(a.work) / "subsample.pkl")
    with pkl.open("rb") as f:
        n_users = len(pickle.load(f)["train"])
    result: dict[str, Any] = {"name": a.name, "command": command_line(), "machine": machine(),
                              "settings": {"pkl": str(a.pkl), "users": n_users, "epochs": a.epochs, "seed": a.seed,
                                           "threads": a.threads, "time_batches": a.time_batches},
                              "curves": {}, "timing": {}}
    for side, checkout in (("whuir", a.whuir), ("diffurecsys", a.diffurecsys)):
        if checkout is None:
            continue
        label = SIDES[side]["label"]
        if a.check:
            result["check"] = result.get("check", {}) | {label: run_official(side, checkout.resolve(), pkl, a)}
            print(label, json.dumps(result["check"][label]), flush=True)
            continue
        runs = {f"official {label}": run_official(side, checkout.resolve(), pkl, a),
                f"ours {label}": run_ours(side, pkl, a)}
        if a.fast and side == "whuir":
            runs[f"ours {label} (fast)"] = run_ours(side, pkl, a, variant="fast")
        for key, res in runs.items():
            if a.time_batches:
                result["timing"][key] = res
            else:
                result["curves"][key] = res.pop("epochs")
                result.setdefault("runs", {})[key] = res
            print(key, json.dumps(res)[:300], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    if result["curves"]:
        plot(result, a.out / f"{a.name}.png")
    print(f"wrote {a.out / (a.name + '.json')}")


if __name__ == "__main__":
    main()
