"""``dreamrec bench``: one command per paper table.

A table is a YAML spec (``configs/tables/<name>.yaml``, :class:`TableSpec`): the published split's format
and protocol, the seeds, the metrics, and its rows, each a committed run config (paths relative to the
spec) with optional overrides, a flag for baselines and the published numbers to print beside ours.
:func:`run_table` prepares the split from a path, trains every row over the seeds (a finished seed is
reused, an unfinished one resumed from its checkpoint, a finished one whose config now differs only in
``train.epochs`` or ``train.patience`` continued from it), records each finished seed in the table's run
ledger (:mod:`dreamrec.bench.ledger`; a recorded seed of the same config and split is reused when its run
directory is gone), and writes ``<name>.json`` and ``<name>.md`` from every finished seed of the spec's rows,
those of earlier calls included (``--rows`` and ``--seed`` choose what trains, not what the table shows; a seed
that ``train.max_minutes`` stopped is not finished: it is continued by the next call, never tabled): mean
± std per metric, Welch's t-test of each row against the best baseline, machine, date and command.
:func:`plan` is the ``--dry-run``: what would be trained, reused or resumed, and the CPU time it would take
(each row's ``cpu_minutes`` per seed, measured on a 2-core CPU, where the spec gives one).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml
from pydantic import ValidationError

from dreamrec.bench import ledger as ledger_mod
from dreamrec.bench.spec import TableRow, TableSpec, load_spec, row_config
from dreamrec.config import PrepareConfig, RunConfig
from dreamrec.data.dataset import PreparedDataset
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.eval.report import command_line, machine
from dreamrec.models.memory import check_model_memory
from dreamrec.train.resume import resolved_params
from dreamrec.train.run import resolve, train_run


@dataclass
class Job:
    row: TableRow
    seed: int
    config: RunConfig
    out: Path
    status: Literal["reuse", "resume", "train"]
    metrics: dict[str, Any] | None = None  # a reused seed's test metrics (from its run directory or the ledger)
    recorded: bool = False  # the ledger already holds this seed's matching record


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without the settings that say where it ran, not what it computes."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in ("threads", "device", "compile", "max_minutes")}
    return {**config, "train": train}


BUDGET = ("epochs", "patience")  # train settings a finished run may be continued under (dreamrec.train.resume)


def _budget_only(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether two comparable configs differ only in :data:`BUDGET` settings."""
    strip = lambda c: {**c, "train": {k: v for k, v in c["train"].items() if k not in BUDGET}}  # noqa: E731
    return strip(have) == strip(want)


def _match(have: dict[str, Any], want: dict[str, Any]) -> Literal["same", "budget", "other"]:
    """How a finished run's config ``have`` (its ``config.yaml``) stands to the comparable resolved config
    ``want``: the same run, the same but for :data:`BUDGET`, or another run (also when ``have`` no longer
    validates)."""
    try:
        have_cfg = RunConfig(**have)
    except (ValidationError, TypeError):
        return "other"
    # settings added since that run was written take their defaults there, as they did in the run
    have_c = _comparable({**have_cfg.model_dump(mode="json"), "params": resolved_params(have_cfg)})
    if have_c == want:
        return "same"
    return "budget" if _budget_only(have_c, want) else "other"


class _Resolved:
    """The comparable resolved config of a row at a seed, built once and only where a finished run needs it."""

    def __init__(self, cfg: RunConfig, dataset: PreparedDataset):
        self.cfg, self.dataset, self._value = cfg, dataset, None

    def __call__(self) -> dict[str, Any]:
        if self._value is None:
            resolved, _ = resolve(self.cfg, self.dataset)
            self._value = _comparable(resolved.model_dump(mode="json"))
        return self._value


def _run_dir(out: Path, spec: TableSpec, row: TableRow, seed: int) -> Path:
    return out / "runs" / spec.name / row.name / f"seed{seed}"


def _job(spec: TableSpec, row: TableRow, seed: int, cfg: RunConfig, dataset: PreparedDataset, fingerprint: str,
         out: Path, ledger: dict[ledger_mod.Key, dict[str, Any]]) -> Job:
    """What a seed of a row (run config ``cfg``) needs: reuse (a finished run directory of the same config, or
    else a ledger record of the same config and split), resume (a checkpoint, or a finished run of a larger
    budget), or train."""
    run_dir = _run_dir(out, spec, row, seed)
    want = _Resolved(cfg, dataset)
    rec = ledger.get((row.name, seed))
    recorded = (rec is not None and rec["dataset"] == fingerprint and not rec.get("stopped_by_budget")
                and _match(rec["config"], want()) == "same")
    if (run_dir / "metrics.json").exists():
        match = _match(yaml.safe_load((run_dir / "config.yaml").read_text()), want())
        done = json.loads((run_dir / "metrics.json").read_text())
        if match == "same" and not done.get("stopped_by_budget"):
            return Job(row, seed, cfg, run_dir, "reuse", done["test"], recorded)
        if match != "other" and (run_dir / "checkpoint").exists():
            # a larger epoch budget or patience, or a run that train.max_minutes stopped: continue it
            return Job(row, seed, cfg, run_dir, "resume")
        if match == "same":
            raise ArtifactError(f"{run_dir}: its time budget (train.max_minutes) stopped it and it has no checkpoint "
                                f"to continue from; remove that run to train it again")
        raise ArtifactError(f"{run_dir}: holds a finished run of another config than row {row.name!r} "
                            f"now asks for; use another --out (or remove that run)")
    if recorded:
        assert rec is not None
        return Job(row, seed, cfg, run_dir, "reuse", rec["test"], True)
    return Job(row, seed, cfg, run_dir, "resume" if (run_dir / "checkpoint").exists() else "train")


def _jobs(spec_path: Path, spec: TableSpec, dataset: PreparedDataset, fingerprint: str, out: Path, seeds: list[int],
          overrides: list[str], rows: list[str] | None, ledger: dict[ledger_mod.Key, dict[str, Any]]) -> list[Job]:
    jobs = []
    for row in spec.rows:
        if rows and row.name not in rows:
            continue
        for seed in seeds:
            cfg = row_config(spec_path, row, overrides, seed)
            if seed == seeds[0]:  # every row's config builds on this dataset (also for --dry-run)
                check_model_memory(cfg.model, dataset.n_items, cfg.train.max_len or dataset.max_len, cfg.params,
                                   copies=4, purpose="train", source=row.config)
                if (cfg.train.max_len or 0) > dataset.max_len:
                    raise ConfigError(f"row {row.name!r}: train.max_len={cfg.train.max_len} exceeds the table's window "
                                      f"({dataset.max_len}); raise the spec's max_len")
            jobs.append(_job(spec, row, seed, cfg, dataset, fingerprint, out, ledger))
    return jobs


def _others(spec_path: Path, spec: TableSpec, dataset: PreparedDataset, fingerprint: str, out: Path,
            seeds: list[int], overrides: list[str], rows: list[str] | None,
            ledger: dict[ledger_mod.Key, dict[str, Any]], done: set[ledger_mod.Key]) -> list[Job]:
    """The finished seeds of the rows and seeds this call does not run (the spec's, and ``seeds``): the table
    shows them beside this call's. The command's overrides apply to the rows it runs (``rows``, default all);
    another row is taken at its spec's config. A seed whose runs do not match that config is left out."""
    jobs = []
    for row in spec.rows:
        ov = overrides if not rows or row.name in rows else []
        for seed in dict.fromkeys([*spec.seeds, *seeds]):
            if (row.name, seed) in done:
                continue
            if not (_run_dir(out, spec, row, seed) / "metrics.json").exists() and (row.name, seed) not in ledger:
                continue
            try:
                job = _job(spec, row, seed, row_config(spec_path, row, ov, seed), dataset, fingerprint, out, ledger)
            except ArtifactError:
                continue
            if job.status == "reuse":
                jobs.append(job)
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
    where = f" on {meta['machines']}" if meta.get("machines") else ""
    runs = (f"; seeds finished {meta['runs']}{where} (their records: `{spec.name}{ledger_mod.SUFFIX}`)"
            if meta.get("runs") else "")
    out.append(f"Test split, full ranking, every row counted; each seed selected on validation. {meta['machine']}, "
               f"{meta['date']}{runs}; command: `{meta['command']}`.")
    return "\n".join(out) + "\n"


def _keep_earlier_seeds(table_json: Path, spec: TableSpec, seeds: list[int], jobs: list[Job], others: list[Job]) -> None:
    """Refuse, before anything trains, to rewrite a table without seeds it shows today: a seed of a row still in
    the spec that this call neither runs nor finds finished (a table written before its ledger existed, or one
    whose run directories are gone)."""
    if not table_json.exists():
        return
    try:
        shown = json.loads(table_json.read_text()).get("rows", {})
    except ValueError:
        raise ArtifactError(f"{table_json}: not a table's JSON; move it away or choose another --results") from None
    spec_rows, wanted = {r.name for r in spec.rows}, set(spec.seeds) | set(seeds)
    kept = {(j.row.name, j.seed) for j in [*jobs, *others]}
    lost = sorted((name, int(seed)) for name, row in shown.items() if name in spec_rows
                  for seed in row.get("seeds", []) if int(seed) in wanted and (name, int(seed)) not in kept)
    if lost:
        listed = ", ".join(f"{n} seed {s}" for n, s in lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
        raise ArtifactError(f"{table_json} shows {listed}, which this call would drop: neither a run directory under "
                            f"--out nor a record in its ledger holds them for today's config. Train them too (leave out "
                            f"--rows / --seed) or write this table elsewhere (--results)")


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
    results_dir = Path(results_dir) if results_dir is not None else out / "results"
    ledger_file = ledger_mod.ledger_path(results_dir, spec.name)
    ledger = ledger_mod.read_ledger(ledger_file)
    dataset = prepare(spec, Path(source), out)
    fingerprint = ledger_mod.dataset_fingerprint(dataset)
    seeds = seeds or spec.seeds
    overrides = overrides or []
    jobs = _jobs(spec_path, spec, dataset, fingerprint, out, seeds, overrides, rows, ledger)
    _keep_earlier_seeds(results_dir / f"{spec.name}.json", spec, seeds, jobs,
                        _others(spec_path, spec, dataset, fingerprint, out, seeds, overrides, rows, ledger,
                                {(j.row.name, j.seed) for j in jobs}))
    if dry_run:
        return plan(jobs)
    here = machine()
    finished: dict[ledger_mod.Key, dict[str, Any]] = {}
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.row.name} seed {job.seed}: {job.status}"
            + (" (from the ledger)" if job.status == "reuse" and not (job.out / "metrics.json").exists() else ""))
        if job.status == "reuse":
            metrics = job.metrics
        else:
            result = train_run(job.config, out / "data" / spec.name, job.out, resume=job.status == "resume",
                               progress=False, log=None, dataset=dataset)
            if result.get("stopped_by_budget"):
                log(f"  {job.row.name} seed {job.seed}: stopped by train.max_minutes, not finished: left out of the "
                    "table and the ledger (the same command continues it)")
                continue
            metrics = result["test"]
        if not job.recorded:  # a seed finished here, or a finished run directory the ledger lacks
            ledger_mod.write_record(ledger_file, ledger_mod.run_record(job.row.name, job.seed, job.out, fingerprint, here))
        assert metrics is not None
        finished[(job.row.name, job.seed)] = metrics
    runs = ledger_mod.read_ledger(ledger_file)  # this call's records and those of processes beside it
    for job in _others(spec_path, spec, dataset, fingerprint, out, seeds, overrides, rows, runs, set(finished)):
        assert job.metrics is not None
        finished[(job.row.name, job.seed)] = job.metrics
    order = list(dict.fromkeys([*spec.seeds, *seeds]))
    results: dict[str, list[dict[str, Any]]] = {}
    for row in spec.rows:
        for seed in order:
            if (row.name, seed) in finished:
                results.setdefault(row.name, []).append({"seed": seed, **finished[(row.name, seed)]})
    summary = summarise(spec, results)
    meta = {"machine": here, "command": command_line(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    records = [runs[k] for k in finished if k in runs]
    dates = sorted(r["finished"] for r in records if r.get("finished"))
    if dates:
        meta["runs"] = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    # where the seeds trained (a table can gather seeds from several machines), by how many each
    machines = Counter(r["machine"] for r in records if r.get("machine"))
    if machines:
        meta["machines"] = "; ".join(f"{m} ({n} seed{'s' if n > 1 else ''})" for m, n in machines.most_common())
    record = {"table": spec.name, "spec": spec.model_dump(mode="json"), "ledger": ledger_file.name, **meta, **summary}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{spec.name}.json").write_text(json.dumps(record, indent=2))
    (results_dir / f"{spec.name}.md").write_text(render(spec, summary, meta))
    log(f"wrote {results_dir / (spec.name + '.json')}, {spec.name}.md and {ledger_file.name}")
    return summary
