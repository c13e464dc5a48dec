"""``dreamrec bench``: one command per paper table.

A table is a YAML spec (``configs/tables/<name>.yaml``, :class:`TableSpec`): the published split's format
and protocol, the seeds, the metrics, and its rows, each a committed run config (paths relative to the
spec) with optional overrides, a flag for baselines and the published numbers to print beside ours.
:func:`run_table` prepares the split from a path, trains every row over the seeds (a finished seed is
reused, an unfinished one resumed from its checkpoint, a finished one whose config now differs only in
``train.epochs`` or ``train.patience`` continued from it), and writes ``<name>.json`` and ``<name>.md``: mean
± std per metric, Welch's t-test of each row against the best baseline, machine, date and command.
:func:`plan` is the ``--dry-run``: what would be trained, reused or resumed, and the CPU time it would take
(each row's ``cpu_minutes`` per seed, measured on a 2-core CPU, where the spec gives one).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamrec.config import PrepareConfig, RunConfig, apply_overrides, build_run_config, load_yaml, validation_message
from dreamrec.data.dataset import PreparedDataset
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.eval.report import command_line, machine
from dreamrec.models.memory import check_model_memory
from dreamrec.train.resume import resolved_params
from dreamrec.train.run import resolve, train_run


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableRow(_Strict):
    name: str = Field(..., description="the row's label (a paper's name only where its method runs)")
    config: str = Field(..., description="run config (YAML), relative to the spec file")
    set: list[str] = Field(default_factory=list, description="key=value overrides of the config")
    baseline: bool = Field(False, description="a baseline: the rows are tested against the best of these")
    cpu_minutes: float | None = Field(None, gt=0, description="CPU minutes per seed on a 2-core machine (the plan)")
    published: dict[str, float] = Field(default_factory=dict, description="published numbers, percent, by metric")


class TableSpec(_Strict):
    name: str
    title: str
    format: Literal["csv", "tsv", "parquet", "recbole", "movielens", "dreamrec", "diffurec"]
    protocol: Literal["dreamrec", "loo"] = "loo"
    max_len: int | None = Field(None, ge=1, description="history window (default the protocol's)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["HR@20", "NDCG@20"], min_length=1)
    published_source: str | None = Field(None, description="where the published numbers come from")
    rows: list[TableRow] = Field(..., min_length=1)


def load_spec(path: str | Path) -> TableSpec:
    path = Path(path)
    data = load_yaml(path)
    try:
        spec = TableSpec(**data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, str(path))) from None
    names = [r.name for r in spec.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: row names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for row in spec.rows:
        if not (path.parent / row.config).is_file():
            raise ConfigError(f"{path}: row {row.name!r}: config {row.config!r} not found next to the spec")
    return spec


def row_config(spec_path: Path, row: TableRow, overrides: list[str], seed: int) -> RunConfig:
    """The run config of ``row`` at ``seed`` (the spec's overrides, then the command's)."""
    path = Path(spec_path).parent / row.config
    data = apply_overrides(load_yaml(path), [*row.set, *overrides, f"train.seed={seed}"])
    return build_run_config(data, str(path))


@dataclass
class Job:
    row: TableRow
    seed: int
    config: RunConfig
    out: Path
    status: Literal["reuse", "resume", "train"]


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without the settings that say where it ran, not what it computes."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in ("threads", "device", "compile", "max_minutes")}
    return {**config, "train": train}


BUDGET = ("epochs", "patience")  # train settings a finished run may be continued under (dreamrec.train.resume)


def _budget_only(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether two comparable configs differ only in :data:`BUDGET` settings."""
    strip = lambda c: {**c, "train": {k: v for k, v in c["train"].items() if k not in BUDGET}}  # noqa: E731
    return strip(have) == strip(want)


def _jobs(spec_path: Path, spec: TableSpec, dataset: PreparedDataset, out: Path, seeds: list[int],
          overrides: list[str], rows: list[str] | None) -> list[Job]:
    jobs = []
    for row in spec.rows:
        if rows and row.name not in rows:
            continue
        for seed in seeds:
            cfg = row_config(spec_path, row, overrides, seed)
            run_dir = out / "runs" / spec.name / row.name / f"seed{seed}"
            status: Literal["reuse", "resume", "train"] = "train"
            if seed == seeds[0]:  # every row's config builds on this dataset (also for --dry-run)
                check_model_memory(cfg.model, dataset.n_items, cfg.train.max_len or dataset.max_len, cfg.params,
                                   copies=4, purpose="train", source=row.config)
                if (cfg.train.max_len or 0) > dataset.max_len:
                    raise ConfigError(f"row {row.name!r}: train.max_len={cfg.train.max_len} exceeds the table's window "
                                      f"({dataset.max_len}); raise the spec's max_len")
            if (run_dir / "metrics.json").exists():
                resolved, _ = resolve(cfg, dataset)
                have = yaml.safe_load((run_dir / "config.yaml").read_text())
                # settings added since that run was written take their defaults there, as they did in the run
                have_cfg = RunConfig(**have)
                have_full = {**have_cfg.model_dump(mode="json"), "params": resolved_params(have_cfg)}
                have_c, want_c = _comparable(have_full), _comparable(resolved.model_dump(mode="json"))
                if have_c == want_c:
                    status = "reuse"
                elif _budget_only(have_c, want_c) and (run_dir / "checkpoint").exists():
                    status = "resume"  # a larger epoch budget or patience: the run continues from its checkpoint
                else:
                    raise ArtifactError(f"{run_dir}: holds a finished run of another config than row {row.name!r} "
                                        f"now asks for; use another --out (or remove that run)")
            elif (run_dir / "checkpoint").exists():
                status = "resume"
            jobs.append(Job(row, seed, cfg, run_dir, status))
    return jobs


def prepare(spec: TableSpec, source: Path, out: Path) -> PreparedDataset:
    """The split at ``out/data/<name>``, prepared from ``source`` unless it is there already (from the same
    source, format, protocol and window)."""
    data_dir = out / "data" / spec.name
    cfg = PrepareConfig(protocol=spec.protocol, max_len=spec.max_len)
    if (data_dir / "meta.json").exists():
        ds = PreparedDataset.load(data_dir)
        info = ds.info or {}
        same = (info.get("format", spec.format) == spec.format and info.get("source")
                and Path(info["source"]).resolve() == Path(source).resolve()
                and ds.protocol == spec.protocol and (spec.max_len is None or ds.max_len == spec.max_len))
        if not same:
            raise ArtifactError(f"{data_dir}: holds a dataset prepared from another source or with other settings; "
                                "use another --out")
        return ds
    from dreamrec.data.prepare import prepare_source

    ds = prepare_source(source, spec.format, cfg)
    ds.save(data_dir)
    return PreparedDataset.load(data_dir)


def plan(jobs: list[Job]) -> str:
    """The ``--dry-run`` text: per row, the seeds to train / resume / reuse and the estimated CPU time."""
    lines = [f"{'row':<28} {'train':>5} {'resume':>6} {'reuse':>5} {'CPU min/seed':>12} {'CPU min':>8}"]
    total, unknown = 0.0, []
    by_row: dict[str, list[Job]] = {}
    for j in jobs:
        by_row.setdefault(j.row.name, []).append(j)
    for name, js in by_row.items():
        n = {s: sum(j.status == s for j in js) for s in ("train", "resume", "reuse")}
        per = js[0].row.cpu_minutes
        work = n["train"] + 0.5 * n["resume"]  # a resumed seed: about half a run left, on average
        cost = "?" if per is None else f"{per * work:.0f}"
        if per is None and work:
            unknown.append(name)
        total += (per or 0.0) * work
        lines.append(f"{name:<28} {n['train']:>5} {n['resume']:>6} {n['reuse']:>5} "
                     f"{'?' if per is None else f'{per:g}':>12} {cost:>8}")
    hours = total / 60
    lines.append(f"estimated CPU time: {total:.0f} minutes ({hours:.1f} h) on a 2-core CPU, one job per core"
                 + (f"; unknown for {', '.join(unknown)}" if unknown else ""))
    return "\n".join(lines)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test, or None with fewer than two values on a side (or no variance)."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    from scipy import stats

    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def summarise(spec: TableSpec, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row: mean, std and values of each metric over its seeds; Welch's p against the best baseline
    (by the first metric's mean)."""
    rows: dict[str, Any] = {}
    for name, per_seed in results.items():
        rows[name] = {m: {"mean": float(np.mean([r[m] for r in per_seed])),
                          "std": float(np.std([r[m] for r in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0,
                          "values": [r[m] for r in per_seed]} for m in spec.metrics}
        rows[name]["seeds"] = [r["seed"] for r in per_seed]
    first = spec.metrics[0]
    baselines = [r.name for r in spec.rows if r.baseline and r.name in rows]
    best = max(baselines, key=lambda n: rows[n][first]["mean"]) if baselines else None
    for name in rows:
        rows[name]["p_vs_best_baseline"] = (
            {m: welch_p(rows[name][m]["values"], rows[best][m]["values"]) for m in spec.metrics}
            if best is not None and name != best else None)
    return {"best_baseline": best, "rows": rows}


def render(spec: TableSpec, summary: dict[str, Any], meta: dict[str, str]) -> str:
    """The Markdown table: percent, mean ± std, seeds, Welch's p against the best baseline, published."""
    best = summary["best_baseline"]
    published = any(r.published for r in spec.rows)
    head = ["row", *(f"{m} (%)" for m in spec.metrics), "seeds"]
    if best:
        head.append(f"p vs {best} ({' / '.join(spec.metrics)})")
    if published:
        head += [f"published {m}" for m in spec.metrics]
    out = [f"### {spec.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in spec.rows:
        r = summary["rows"].get(row.name)
        if r is None:
            continue
        cells = [row.name + (" (baseline)" if row.baseline else "")]
        cells += [f"{100 * r[m]['mean']:.2f} ± {100 * r[m]['std']:.2f}" for m in spec.metrics]
        cells.append(str(len(r["seeds"])))
        if best:
            p = r["p_vs_best_baseline"]
            cells.append("—" if p is None else " / ".join("—" if p[m] is None else f"{p[m]:.3f}" for m in spec.metrics))
        if published:
            cells += [f"{row.published[m]:.2f}" if m in row.published else "" for m in spec.metrics]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if published and spec.published_source:
        out.append(f"Published numbers: {spec.published_source}.")
    out.append(f"Test split, full ranking, every row counted; each seed selected on validation. {meta['machine']}, "
               f"{meta['date']}; command: `{meta['command']}`.")
    return "\n".join(out) + "\n"


def run_table(spec_path: str | Path, source: str | Path, out: str | Path, *, results_dir: str | Path | None = None,
              seeds: list[int] | None = None, rows: list[str] | None = None, overrides: list[str] | None = None,
              dry_run: bool = False, log: Callable[[str], None] = print) -> dict[str, Any] | str:
    """Run (or with ``dry_run`` plan) the table of ``spec_path`` on the split at ``source``; see the module
    docstring. Returns the summary (or the plan's text)."""
    spec_path, out = Path(spec_path), Path(out)
    spec = load_spec(spec_path)
    if rows:
        unknown = sorted(set(rows) - {r.name for r in spec.rows})
        if unknown:
            raise ConfigError(f"{spec_path}: no row named {', '.join(map(repr, unknown))}; rows: "
                              f"{', '.join(r.name for r in spec.rows)}")
    dataset = prepare(spec, Path(source), out)
    jobs = _jobs(spec_path, spec, dataset, out, seeds or spec.seeds, overrides or [], rows)
    if dry_run:
        return plan(jobs)
    results: dict[str, list[dict[str, Any]]] = {}
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.row.name} seed {job.seed}: {job.status}")
        if job.status == "reuse":
            metrics = json.loads((job.out / "metrics.json").read_text())
        else:
            metrics = train_run(job.config, out / "data" / spec.name, job.out, resume=job.status == "resume",
                                progress=False, log=None, dataset=dataset)
        results.setdefault(job.row.name, []).append({"seed": job.seed, **metrics["test"]})
    summary = summarise(spec, results)
    meta = {"machine": machine(), "command": command_line(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    record = {"table": spec.name, "spec": spec.model_dump(mode="json"), **meta, **summary}
    results_dir = Path(results_dir) if results_dir is not None else out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{spec.name}.json").write_text(json.dumps(record, indent=2))
    (results_dir / f"{spec.name}.md").write_text(render(spec, summary, meta))
    log(f"wrote {results_dir / (spec.name + '.json')} and {spec.name}.md")
    return summary
