"""Benchmark results: one JSON schema for every table, and the Markdown rendering of them.

A result file holds: ``dataset``, ``protocol``, ``model``, ``variant``, ``config`` (resolved),
``seeds``, ``metrics`` (for each key such as ``"HR@20"``: ``mean``, ``std``, ``values`` per seed,
as fractions), ``command``, ``machine``, ``date``; extra keys (``val_metrics``, ``seconds``)
are allowed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_KEYS = ("dataset", "protocol", "model", "variant", "config", "seeds", "metrics", "command", "machine", "date")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{cpu_model()}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}, Python {platform.python_version()}"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """{metric: {mean, std, values}} over seeds (sample std, ddof=1; 0 for one seed)."""
    keys = [k for k in per_seed[0] if k != "n" and "@" in k]
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        v = np.array([m[k] for m in per_seed], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}
    if "n" in per_seed[0]:
        out["n"] = {"mean": float(per_seed[0]["n"]), "std": 0.0, "values": [m["n"] for m in per_seed]}
    return out


def make_record(
    *,
    dataset: str,
    protocol: str,
    model: str,
    variant: str,
    config: dict[str, Any],
    seeds: list[int],
    test: list[dict[str, float]],
    val: list[dict[str, float]] | None = None,
    seconds: list[float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "dataset": dataset,
        "protocol": protocol,
        "model": model,
        "variant": variant,
        "config": config,
        "seeds": seeds,
        "metrics": aggregate(test),
        "command": command_line(),
        "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if val:
        rec["val_metrics"] = aggregate(val)
    if seconds:
        rec["seconds"] = {"mean": float(np.mean(seconds)), "values": seconds}
    if extra:
        rec.update(extra)
    return rec


def write_record(record: dict[str, Any], results_dir: Path) -> Path:
    name = f"{record['dataset']}__{record['model']}__{record['variant']}.json".replace("/", "-")
    path = Path(results_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    recs = []
    for p in sorted(Path(results_dir).glob("*.json")):
        r = json.loads(p.read_text())
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"{p}: result lacks {missing}")
        r["_file"] = p.name
        recs.append(r)
    return recs


def percent_cell(entry: dict[str, Any]) -> str:
    """``{"mean": m, "std": s}`` of fractions as ``"100m ± 100s"`` with two decimals (a table cell)."""
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def render_markdown(records: list[dict[str, Any]], metrics: tuple[str, ...] = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")) -> str:
    """One table per (dataset, protocol): mean ± std in percent, with seeds, machine, date, command."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["protocol"]), []).append(r)
    out: list[str] = []
    for (dataset, protocol), recs in sorted(groups.items()):
        out.append(f"### {dataset} ({protocol})\n")
        out.append("| model | variant | seeds | " + " | ".join(f"{m} (%)" for m in metrics) + " |")
        out.append("|---|---|---|" + "---|" * len(metrics))
        for r in recs:
            cells = []
            for m in metrics:
                v = r["metrics"].get(m)
                cells.append("—" if v is None else percent_cell(v))
            out.append(f"| {r['model']} | {r['variant']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
        out.append("")
        for r in recs:
            out.append(f"- `{r['_file']}`: {r['date']}, {r['machine']}; `{r['command']}`")
        out.append("")
    return "\n".join(out)
