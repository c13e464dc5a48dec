"""Shared runner for the benchmark scripts: a config over several seeds -> one result JSON.

Each finished seed is also kept in ``results/seeds/`` with its resolved config; a later run
with the same config reuses it instead of training again, so long tables can be filled in
over several sittings.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

from dreamrec.config import apply_overrides, build_run_config, load_yaml
from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.report import command_line, load_records, machine, make_record, render_markdown, write_record
from dreamrec.train.run import resolve, train_run

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


# model options that change how a result is computed, never the result (tested to be exact)
EXACT_PARAMS = ("trim_padding",)


def _cache_key(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config, with every default filled in, without the settings that say where it ran,
    not what it computes (thread count, device, torch.compile, the exact options of ``EXACT_PARAMS``): a seed trained
    on a GPU stands in for the same config on a CPU. Defaults are filled in again through the typed
    configs, so a seed saved before an option existed still matches when the option keeps its default.
    Each seed file keeps its ``machine`` and resolved ``device``, and the tables say which rows ran where."""
    from dreamrec.config import TrainConfig
    from dreamrec.models.registry import model_config

    try:  # model_config also reads a paper-model config saved before issue 32 (research options at their defaults)
        params = model_config(config["model"], config.get("params", {})).model_dump(mode="json")
        train = TrainConfig(**config["train"]).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - an unreadable old config simply does not match
        params, train = config.get("params", {}), dict(config.get("train", {}))
    train = {k: v for k, v in train.items() if k not in ("threads", "device", "compile")}
    params = {k: v for k, v in params.items() if k not in EXACT_PARAMS}
    if params.get("sampler") == "onestep":  # one network call whatever S says (the old default S was 10)
        params.pop("sampler_steps", None)
    return {**config, "params": params, "train": train}


def same_run(done: dict[str, Any], key: dict[str, Any]) -> bool:
    """Whether the finished seed record ``done`` stands in for a run whose cache key is ``key``.

    Its resolved config must give the same key, except for ``train.max_minutes`` when that budget did
    not stop the finished run: a wall-clock limit that never bound changed nothing that was computed
    (a GPU seed that early-stopped inside 12 minutes is the run an unbudgeted CPU seed would do). A
    seed stopped by its budget matches only the same budget."""
    have = _cache_key(done["config"])
    if have == key:
        return True
    if done.get("stopped_by_budget"):
        return False
    strip = lambda k: {**k, "train": {n: v for n, v in k["train"].items() if n != "max_minutes"}}  # noqa: E731
    return strip(have) == strip(key)


def _resumable(out: Path, resolved: dict[str, Any]) -> bool:
    """True when ``out`` holds an unfinished run (a checkpoint, no final weights) of the same config:
    an interrupted benchmark then continues where it stopped (``seconds`` counts this sitting only)."""
    import yaml

    if not (out / "checkpoint" / "state.json").is_file() or (out / "model.safetensors").exists():
        return False
    try:
        old = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(old, dict) and "train" in old and _cache_key(old) == _cache_key(resolved)


def run_variant(
    *,
    dataset_name: str,
    data_dir: Path,
    config_path: Path,
    seeds: list[int],
    runs_dir: Path,
    results_dir: Path = RESULTS,
    overrides: list[str] | None = None,
    variant: str | None = None,
    progress: bool = False,
    reuse: list[tuple[Path, str]] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Train ``config_path`` once per seed on ``data_dir`` and write the aggregated result JSON (unless
    ``write`` is False: the record is only returned, and an existing aggregate over other seeds is kept).

    ``reuse``: (seeds folder, variant) pairs whose finished seeds may stand in for this variant's
    when their resolved config is the same (e.g. the search run of dreamrec_table1.py); a reused
    seed is copied under this variant's name."""
    ds = PreparedDataset.load(data_dir)
    raw = apply_overrides(load_yaml(config_path), overrides or [])
    variant = variant or config_path.stem
    test, val, secs, seed_runs = [], [], [], []
    resolved: dict[str, Any] = {}
    for seed in seeds:
        cfg = build_run_config(apply_overrides(raw, [f"train.seed={seed}"]), str(config_path))
        resolved = resolve(cfg, ds)[0].model_dump(mode="json")
        seed_file = results_dir / "seeds" / f"{dataset_name}__{variant}__seed{seed}.json"
        key = _cache_key(resolved)
        done = json.loads(seed_file.read_text()) if seed_file.exists() else None
        if done is not None and not same_run(done, key):
            done = None
        if done is None:
            for folder, other in reuse or []:
                f = folder / f"{dataset_name}__{other}__seed{seed}.json"
                cand = json.loads(f.read_text()) if f.exists() else None
                if cand is not None and same_run(cand, key):
                    print(f"reusing {f} as {seed_file.name}")
                    seed_file.parent.mkdir(parents=True, exist_ok=True)
                    seed_file.write_text(json.dumps(cand, indent=2))
                    done = cand
                    break
        if done is None:
            out = runs_dir / dataset_name / variant / f"seed{seed}"
            resume = _resumable(out, resolved)
            if out.exists() and not resume:
                shutil.rmtree(out)
            if resume:
                print(f"resuming the unfinished run in {out}")
            t = time.time()
            m = train_run(cfg, data_dir, out, resume=resume, progress=progress, log=print, dataset=ds)
            done = {"config": resolved, "seconds": time.time() - t, "best_epoch": m["best_epoch"],
                    "epochs_trained": m["epochs_trained"], "stopped_by_budget": m["stopped_by_budget"],
                    "val": m["val"], "test": m["test"], "machine": machine(), "command": command_line(),
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            seed_file.parent.mkdir(parents=True, exist_ok=True)
            seed_file.write_text(json.dumps(done, indent=2))
        else:
            print(f"reusing {seed_file.name}")
        secs.append(done["seconds"])
        seed_runs.append({"seed": seed, **{k: done.get(k) for k in ("machine", "command", "date")}})
        if done.get("stopped_by_budget"):
            seed_runs[-1].update(stopped_by_budget=True, epochs_trained=done.get("epochs_trained"))
        test.append(done["test"])
        val.append(done["val"])
        print(json.dumps({"variant": variant, "seed": seed, "best_epoch": done["best_epoch"],
                          "val_HR@20": done["val"].get("HR@20"), "test_HR@20": done["test"]["HR@20"],
                          "test_NDCG@20": done["test"]["NDCG@20"], "seconds": round(done["seconds"], 1)}), flush=True)
    resolved["train"].pop("seed")
    rec = make_record(
        dataset=dataset_name, protocol=ds.protocol, model=raw.get("model", "?"), variant=variant,
        config=resolved, seeds=seeds, test=test, val=val, seconds=secs,
    )
    # where each seed was trained (a cached seed may come from another machine, e.g. a GPU queue run)
    rec["machine"] = "; ".join(sorted({str(r["machine"]) for r in seed_runs if r["machine"]})) or rec["machine"]
    rec["seed_runs"] = seed_runs
    if write:
        write_record(rec, results_dir)
    return rec


def write_tables(results_dir: Path = RESULTS, out: Path = ROOT / "README.md", header: str = "") -> None:
    text = header + render_markdown(load_records(results_dir))
    out.write_text(text)
