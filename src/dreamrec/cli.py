"""The ``dreamrec`` command line: prepare, train, evaluate, recommend, serve, demo."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from dreamrec.errors import DreamrecError

app = typer.Typer(
    help="Generative (diffusion-based) sequential recommendation: prepare data, train, evaluate, recommend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"
    recbole = "recbole"
    movielens = "movielens"
    dreamrec = "dreamrec"
    diffurec = "diffurec"


class Protocol(str, Enum):
    dreamrec = "dreamrec"
    loo = "loo"


class Split(str, Enum):
    val = "val"
    test = "test"


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# inference options of diffusion models beyond sampler/steps, shared by evaluate, recommend and serve
GUIDANCE_W_OPTION = typer.Option(
    None, "--guidance-w", help="DreamRec / iDreamRec: classifier-free guidance strength w at inference (default: the run's)."
)
NEW_ITEM_OFFSET_OPTION = typer.Option(
    None, "--new-item-offset",
    help="Rank items absent from the training data by their standardised new-item score plus this offset "
    "(dreamrec.models.new_items; choose it on validation with benchmarks/new_item_offset.py). Default: the model's own ranking.",
)
CORRECTION_SCALE_OPTION = typer.Option(
    None, "--correction-scale", help="DreamRec with a residual denoiser: generate with c + s (f - c) (default: the run's)."
)


CLOSED_FORM_OPTION = typer.Option(
    None, "--closed-form/--loop",
    help="DreamRec with the mlp1 denoiser: draw x_0 from the reverse process's exact output law in one step "
    "(--closed-form, the default) or run the steps one by one (--loop; same distribution, other noise draws).",
)


def _sampler_options(guidance_w: float | None, correction_scale: float | None,
                     closed_form: bool | None = None) -> dict[str, float | bool | None]:
    """The ``sampler_options`` of :func:`dreamrec.train.run.load_run` (None: keep the run's value)."""
    return {"guidance_w": guidance_w, "correction_scale": correction_scale, "closed_form": closed_form}


OVERWRITE_DATASET_HELP = (
    "Replace the prepared dataset already at --out. A folder holding other files is refused, with or without it: "
    "dreamrec never deletes files it did not write."
)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def prepare(
    source: Path = typer.Argument(..., help="Interaction log file, or the published split (a DreamRec directory / DiffuRec .pkl)."),
    format: Format = typer.Option(..., "--format", "-f", help="Input format. 'dreamrec' and 'diffurec' are pickles: only read because you name them."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the prepared dataset to."),
    protocol: Protocol = typer.Option(Protocol.loo, help="Split protocol for logs: 'loo' (leave-one-out) or 'dreamrec' (users 8:1:1 by time, every prefix a sample)."),
    user_col: str = typer.Option("user_id", help="User column (csv/tsv/parquet/recbole)."),
    item_col: str = typer.Option("item_id", help="Item column (csv/tsv/parquet/recbole)."),
    time_col: str = typer.Option("timestamp", help="Timestamp column: numbers or ISO datetimes."),
    rating_col: Optional[str] = typer.Option(None, help="Optional rating column, kept as is."),
    sep: Optional[str] = typer.Option(None, help="Field separator (csv default ',', tsv '\\t')."),
    item_meta: Optional[Path] = typer.Option(None, help="Item metadata file (e.g. MovieLens movies.dat)."),
    min_item_count: int = typer.Option(5, help="k-core: minimum interactions per item."),
    min_seq_len: int = typer.Option(3, help="k-core: minimum interactions per user."),
    max_len: Optional[int] = typer.Option(None, help="History window (default 10 for dreamrec, 50 for loo)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_DATASET_HELP),
) -> None:
    """Read a log or a published split and write a prepared dataset directory (Parquet/NumPy + JSON)."""
    from dreamrec.config import PrepareConfig
    from dreamrec.data.dataset import check_output_dir
    from dreamrec.data.prepare import prepare_source

    try:
        check_output_dir(out, [source, *([item_meta] if item_meta else [])], overwrite)
        cfg = PrepareConfig(
            protocol=protocol.value, min_item_count=min_item_count, min_seq_len=min_seq_len, max_len=max_len
        )
        ds = prepare_source(
            source, format.value, cfg, user_col=user_col, item_col=item_col, time_col=time_col,
            rating_col=rating_col, sep=sep, item_meta_path=item_meta,
        )
        ds.save(out)
    except (DreamrecError, ValueError) as e:
        _fail(e)
    typer.echo(json.dumps({"out": str(out), **ds.summary()}))


def _run_config(model: str, config: Optional[Path], overrides: list[str]):
    from dreamrec.config import apply_overrides, build_run_config, load_yaml

    data: dict[str, Any] = load_yaml(config) if config else {}
    data = apply_overrides(data, overrides or [])
    if model:
        if data.get("model") not in (None, model):
            _echo(f"note: --model {model} overrides model {data['model']!r} of {config}")
        data["model"] = model
    if "model" not in data:
        raise DreamrecError("no model given: use --model NAME or a config with a 'model' key")
    return build_run_config(data, str(config or "--set"))


@app.command()
def train(
    model: str = typer.Option("", "--model", "-m", help="Model name (popularity, sasrec, gru4rec, ...)."),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared dataset directory (from `dreamrec prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config: model, params, train."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override: key=value (train.lr=1e-3, hidden=64, ...). Repeatable."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from RUN_DIR/checkpoint, under the run's config.yaml unless --model/--config "
        "are given. Only train.epochs, patience, max_minutes, threads, device, precision, compile and a learning-rate "
        "schedule that keeps the trained epochs' rates may differ (dreamrec.train.resume); anything else is refused."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run (finished or not) already at --out: its config, weights, metrics, "
        "log and checkpoint. A folder holding other files is refused, with or without it: dreamrec never deletes "
        "files it did not write."
    ),
) -> None:
    """Train a model with early stopping on validation; writes the run directory and its test metrics."""
    from dreamrec.train import distributed
    from dreamrec.train.run import train_run

    try:
        if resume and not model and config is None and (out / "config.yaml").is_file():
            config = out / "config.yaml"  # resume under the run's own settings (--set may change the allowed ones)
        cfg = _run_config(model, config, set_ or [])
        metrics = train_run(cfg, data, out, resume=resume, overwrite=overwrite, progress=progress, log=_echo)
    except (DreamrecError, ValueError) as e:
        _fail(e)
    if not distributed.from_env().is_main:  # under torchrun, rank 0 reports
        return
    t = metrics["test"]
    _echo(f"best epoch {metrics['best_epoch']}; test HR@20 {t['HR@20']:.4f} NDCG@20 {t['NDCG@20']:.4f} (n={t['n']})")
    for w in metrics.get("warnings", []):
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps({"out": str(out), **metrics}))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory from `dreamrec train`."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Prepared dataset (default: the one the run was trained on)."),
    split: Split = typer.Option(Split.test, help="Which split to evaluate."),
    exclude_seen: bool = typer.Option(False, help="Never rank items already in the history (off by default, as in the papers)."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per scoring batch (default: the run's train.eval_batch_size; results do not depend on it: diffusion noise is keyed per row)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (fractions, plus 'n')."),
    sampler: Optional[str] = typer.Option(None, help="Diffusion models: inference sampler ddpm | ddim | onestep (default: the run's)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Diffusion models: sampler steps S (default: the run's; all T for ddpm)."),
    guidance_w: Optional[float] = GUIDANCE_W_OPTION,
    correction_scale: Optional[float] = CORRECTION_SCALE_OPTION,
    closed_form: Optional[bool] = CLOSED_FORM_OPTION,
    by_frequency: bool = typer.Option(False, help="Also report the metrics by bucket of the target's number of occurrences in the training data (bucket 0: items never seen in training)."),
    frequency_edges: str = typer.Option("0,1,6,21,51,101", help="Lower edges of those buckets, comma-separated, starting at 0."),
    new_item_offset: Optional[float] = NEW_ITEM_OFFSET_OPTION,
) -> None:
    """Full-ranking HR@K, NDCG@K, MRR@K of a trained run on a split (every row counted)."""
    from dreamrec.data.dataset import PreparedDataset
    from dreamrec.eval.evaluate import rank_targets
    from dreamrec.eval.metrics import metrics_from_ranks
    from dreamrec.eval.segments import bucket_labels, frequency_buckets, metrics_by_segment
    from dreamrec.train.run import load_run

    try:
        edges: list[int] = []
        if by_frequency:
            try:
                edges = [int(e) for e in frequency_edges.split(",") if e.strip()]
            except ValueError:
                raise DreamrecError(f"--frequency-edges must be comma-separated integers, got {frequency_edges!r}") from None
            labels = bucket_labels(edges)
        run = load_run(run_dir, sampler=sampler, steps=steps,
                       sampler_options=_sampler_options(guidance_w, correction_scale, closed_form))
        data_dir = data or run.info.get("data_dir")
        if not data_dir:
            raise DreamrecError(f"{run_dir}: no --data given and the run does not record its dataset")
        ds = PreparedDataset.load(data_dir)
        run.check_dataset(ds, data_dir)
        rows = ds.split(split.value)
        model = run.model
        if new_item_offset is not None:
            from dreamrec.models.new_items import NewItemScoring, run_new_item_mask

            if getattr(model, "supports_intent", False):
                raise ValueError(f"--new-item-offset is not available for the intent-aware model {run.config.model!r}")
            # the items new to the data the run trained on (an augmented copy may differ from --data)
            model = NewItemScoring(model, run_new_item_mask(run, fallback=ds), new_item_offset)
        ranks = rank_targets(model, rows, batch_size=batch_size or run.config.train.eval_batch_size,
                             exclude_seen=exclude_seen, seed=run.config.train.seed)
        m = metrics_from_ranks(ranks)
        segments = (metrics_by_segment(ranks, frequency_buckets(ds.train_item_counts(), rows.target, edges), labels)
                    if by_frequency else None)
    except (DreamrecError, ValueError) as e:
        _fail(e)
    if json_out:
        extra = {"new_item_offset": new_item_offset} if new_item_offset is not None else {}
        typer.echo(json.dumps({"split": split.value, **m, **extra, **({"by_frequency": segments} if segments else {})}))
        return
    ks = sorted({int(k.split("@")[1]) for k in m if "@" in k})
    typer.echo(f"{split.value}: n={m['n']}")
    for k in ks:
        typer.echo(f"  @{k:<3} HR {m[f'HR@{k}']:.4f}  NDCG {m[f'NDCG@{k}']:.4f}  MRR {m[f'MRR@{k}']:.4f}")
    if segments:
        typer.echo("by the target's number of training occurrences:")
        for seg in segments:
            sm = seg["metrics"]
            cells = "  ".join(f"HR@{k} {sm[f'HR@{k}']:.4f}" for k in ks) if seg["n"] else "no rows"
            typer.echo(f"  {seg['segment']:>8}  n={seg['n']:<7} ({100 * seg['share']:5.1f} %)  {cells}")


def _parse_history(text: str) -> list[Any]:
    items: list[Any] = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok:
            items.append(tok)
    return items


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A run directory from `dreamrec train`."),
    history: Optional[str] = typer.Option(None, "--history", help="Comma-separated original item ids, oldest first."),
    input: Optional[Path] = typer.Option(None, "--input", help="JSONL file: one {\"history\": [...]} per line."),
    output: Optional[Path] = typer.Option(None, "--output", help="JSONL output for --input (default stdout)."),
    k: int = typer.Option(20, "--k", help="Number of items to return."),
    exclude_seen: bool = typer.Option(False, help="Do not recommend items in the history."),
    intent: Optional[str] = typer.Option(
        None, "--intent", help='Intention text steering the recommendation (intent-aware models such as idreamrec); '
        'with --input it is the default for lines without an "intent" field.'
    ),
    sampler: Optional[str] = typer.Option(None, help="Diffusion models: inference sampler ddpm | ddim | onestep (default: the run's)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Diffusion models: sampler steps S (default: the run's; all T for ddpm)."),
    guidance_w: Optional[float] = GUIDANCE_W_OPTION,
    correction_scale: Optional[float] = CORRECTION_SCALE_OPTION,
    closed_form: Optional[bool] = CLOSED_FORM_OPTION,
    new_item_offset: Optional[float] = NEW_ITEM_OFFSET_OPTION,
) -> None:
    """Top-k items (original ids) with scores for one history or a JSONL batch.

    JSONL lines are {"history": [...]} or {"history": [...], "intent": "..."}."""
    from dreamrec.serve import Recommender

    if (history is None) == (input is None):
        _fail(DreamrecError("give exactly one of --history or --input"))
    try:
        rec = Recommender.load(run_dir, sampler=sampler, steps=steps,
                               sampler_options=_sampler_options(guidance_w, correction_scale, closed_form),
                               new_item_offset=new_item_offset)
        if history is not None:
            items = _parse_history(history)
            r = rec.recommend(items, k=k, intent=intent, exclude_seen=exclude_seen)
            _warn_unknown(rec, [items], [r])
            typer.echo(json.dumps(r.to_dict()))
            return
        assert input is not None
        rows, row_intents = _read_jsonl_requests(input)
        intents = [t if t is not None else intent for t in row_intents]
        any_intent = any(t is not None for t in intents)
        results = []
        # chunks bound memory only: each row's noise is keyed by its own content (dreamrec.keyed_noise),
        # so a line's answer is the one `--history` (or HTTP, or evaluate) gives for it
        for s in range(0, len(rows), 512):
            results += rec.recommend_batch(
                rows[s : s + 512], k=k, intents=intents[s : s + 512] if any_intent else None, exclude_seen=exclude_seen
            )
        _warn_unknown(rec, rows, results)
        lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
        if output:
            output.write_text(lines)
            _echo(f"wrote {len(results)} lines to {output}")
        else:
            sys.stdout.write(lines)
    except (DreamrecError, ValueError) as e:
        _fail(e)


def _warn_unknown(rec: Any, histories: list[list[Any]], results: list[Any]) -> None:
    """Say on stderr when history ids were not in the catalog (ignored), above all when none was."""
    blind = [i for i, (h, r) in enumerate(zip(histories, results)) if h and len(r.unknown) == len(h)]
    partial = sum(1 for h, r in zip(histories, results) if r.unknown and len(r.unknown) < len(h))
    if not blind and not partial:
        return
    examples = ", ".join(repr(v) for v in rec.run.item_ids.head(3).tolist())
    answer = {"popularity": "the training popularity ranking"}.get(results[blind[0]].fallback, "the model's answer "
                                                                    "to an empty history") if blind else ""
    if len(histories) == 1:
        if blind:
            msg = (f"none of the history's ids is in the catalog (unknown: "
                   f"{', '.join(map(repr, results[0].unknown[:5]))}); answered with {answer}")
        else:
            msg = f"ignored {len(results[0].unknown)} id(s) not in the catalog: {', '.join(map(repr, results[0].unknown[:5]))}"
    else:
        msg = (f"{len(blind)} of {len(histories)} histories had no id in the catalog"
               + (f" (answered with {answer})" if blind else "")
               + (f"; {partial} had some unknown ids (ignored)" if partial else ""))
    typer.secho(f"warning: {msg}. Catalog ids look like {examples}.", fg=typer.colors.YELLOW, err=True)


def _read_jsonl(path: Path) -> list[list[Any]]:
    return _read_jsonl_requests(path)[0]


def _read_jsonl_requests(path: Path) -> tuple[list[list[Any]], list[str | None]]:
    """(histories, intents) from a JSONL file of {"history": [...], "intent": "..." (optional)}."""
    from dreamrec.errors import DataError, InvalidValueError

    if not path.is_file():
        raise DataError("file not found", path)
    out: list[list[Any]] = []
    intents: list[str | None] = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidValueError(f"invalid JSON ({e.msg})", path, i) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("history"), list):
            raise InvalidValueError('each line must be an object {"history": [ids...]}', path, i)
        text = obj.get("intent")
        if text is not None and not isinstance(text, str):
            raise InvalidValueError('"intent" must be a string', path, i)
        out.append(obj["history"])
        intents.append(text)
    return out, intents


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory from `dreamrec train`."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to listen on every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the model)."),
    index: str = typer.Option("exact", help="Retrieval for query-based models: 'exact' or 'faiss'."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads per worker (default one, within the "
                                          "worker's share of the cores: dreamrec.threads)."),
    max_body_bytes: int = typer.Option(1_000_000, min=1, help="Larger request bodies get 413."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    sampler: Optional[str] = typer.Option(None, help="Diffusion models: inference sampler ddpm | ddim | onestep (default: the run's)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Diffusion models: sampler steps S (default: the run's; all T for ddpm)."),
    guidance_w: Optional[float] = GUIDANCE_W_OPTION,
    correction_scale: Optional[float] = CORRECTION_SCALE_OPTION,
    closed_form: Optional[bool] = CLOSED_FORM_OPTION,
    new_item_offset: Optional[float] = NEW_ITEM_OFFSET_OPTION,
) -> None:
    """Serve a trained run over HTTP: POST /recommend, /recommend/batch; GET /items/{id}, /health, /metrics, /docs.

    One worker: the run is loaded once, in this process, and served. Several workers: the run is
    checked in a child process (so this supervisor never holds a copy of the model) before any
    worker starts; each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections over
    them (``dreamrec.serve.workers``; uvicorn's shared socket where the platform lacks it), and the workers share
    their Prometheus counters through a temporary folder (``PROMETHEUS_MULTIPROC_DIR``), so /metrics covers
    every worker."""
    import os
    import shutil

    try:
        import uvicorn
    except ImportError:
        _fail(DreamrecError("serving needs the 'serve' extra: pip install 'dreamrec[serve]'"))

    options = _sampler_options(guidance_w, correction_scale, closed_form)
    os.environ["DREAMREC_RUN_DIR"] = str(run_dir.resolve())
    os.environ["DREAMREC_INDEX"] = index
    os.environ["DREAMREC_SAMPLER"] = sampler or ""
    os.environ["DREAMREC_STEPS"] = str(steps or "")
    os.environ["DREAMREC_SAMPLER_OPTIONS"] = json.dumps(options)
    os.environ["DREAMREC_MAX_BODY_BYTES"] = str(max_body_bytes)
    os.environ["DREAMREC_NEW_ITEM_OFFSET"] = "" if new_item_offset is None else repr(new_item_offset)
    if threads:
        os.environ["DREAMREC_THREADS"] = str(threads)
    os.environ["DREAMREC_WORKERS"] = str(workers)
    if workers == 1:  # this process is the worker: load once (failing fast) and serve that app
        from dreamrec.serve.app import app_from_env

        try:
            served = app_from_env()
        except (DreamrecError, ValueError) as e:
            _fail(e)
        uvicorn.run(served, host=host, port=port, log_level=log_level)
        return
    error = _check_run_in_child()  # fail fast, before any worker starts, without a model here
    if error is not None:
        _fail(DreamrecError(error))
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a folder given by the caller is kept
        metrics_dir = tempfile.mkdtemp(prefix="dreamrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from dreamrec.serve.workers import reuseport_supported, run_workers

        if reuseport_supported():  # one socket per worker: the kernel spreads connections (serve.workers)
            run_workers("dreamrec.serve.app:app_from_env", host=host, port=port, workers=workers, log_level=log_level)
        else:
            uvicorn.run("dreamrec.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                        log_level=log_level)
    except DreamrecError as e:
        _fail(e)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _load_from_env() -> str | None:
    """In a child process: build the served app from the ``DREAMREC_*`` variables as a worker will;
    None if that works, else the error message."""
    from dreamrec.serve.app import app_from_env

    try:
        app_from_env()
    except (DreamrecError, ValueError) as e:
        return str(e)
    return None


def _check_run_in_child() -> str | None:
    """:func:`_load_from_env` in a fresh (spawned) process: the run is validated exactly as the
    workers will load it, and its memory goes back to the system when the child exits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_load_from_env).result()


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the runs here (default: a temporary directory)."),
    epochs: int = typer.Option(30, help="Maximum epochs per trained model."),
    seed: int = typer.Option(0, help="Seed for data and training."),
) -> None:
    """Train every model on the embedded synthetic data and compare with the Bayes-optimal bound."""
    from dreamrec.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = run_demo(out or Path(tmp), epochs=epochs, seed=seed, log=_echo)
        except (DreamrecError, ValueError) as e:
            _fail(e)
    typer.echo(rows)


@app.command()
def info(data: Path = typer.Argument(..., help="A prepared dataset directory.")) -> None:
    """Print a prepared dataset's summary as JSON."""
    from dreamrec.data.dataset import PreparedDataset

    try:
        ds = PreparedDataset.load(data)
    except DreamrecError as e:
        _fail(e)
    typer.echo(json.dumps({**ds.summary(), "info": ds.info}, indent=2, default=str))


@app.command()
def augment(
    data: Path = typer.Argument(..., help="A prepared dataset directory (from `dreamrec prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the augmented prepared dataset to."),
    method: str = typer.Option("diffuasr", "--method", help="Augmentation method (diffuasr: Liu et al., CIKM 2023)."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="DiffuASR setting key=value (M=10, d=64, epochs=50, augment_below=20, seed=0, ...; see "
        "dreamrec.augment.DiffuASRConfig). Repeatable."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_DATASET_HELP),
) -> None:
    """Fit a generator on DATA's training split and write a copy whose training sequences get generated
    pre-order items (validation and test unchanged); then `dreamrec train --data OUT` as usual."""
    from dreamrec.augment import augment_dataset, diffuasr_config, train_diffuasr
    from dreamrec.config import parse_settings
    from dreamrec.data.dataset import PreparedDataset, check_output_dir
    from dreamrec.errors import ConfigError

    try:
        if method != "diffuasr":
            raise ConfigError(f"unknown augmentation method {method!r}; expected diffuasr")
        cfg = diffuasr_config(parse_settings(set_ or []))
        check_output_dir(out, [data], overwrite)
        ds = PreparedDataset.load(data)
        t = time.time()
        generator = train_diffuasr(ds, cfg, log=_echo)
        augmented = augment_dataset(ds, generator, cfg)
        augmented.save(out)
    except (DreamrecError, ValueError) as e:
        _fail(e)
    entry = augmented.info["augmentation"][-1]
    _echo(f"diffuasr: prepended {cfg.M} generated items to {entry['n_augmented']} of {entry['n_train']} training "
          f"{'sequences' if entry['train_kind'] == 'sequences' else 'rows'} ({time.time() - t:.0f} s); "
          f"validation and test unchanged")
    typer.echo(json.dumps({"out": str(out), "method": method, "n_augmented": entry["n_augmented"],
                           "n_train": entry["n_train"], "M": cfg.M, **augmented.summary()}))


@app.command()
def bench(
    table: Path = typer.Argument(..., help="A table spec (configs/tables/<name>.yaml)."),
    data: Path = typer.Option(..., "--data", "-d", help="The published split the table is on (a file or folder)."),
    out: Path = typer.Option(Path("runs/bench"), "--out", "-o", help="Prepared data and run directories (reused)."),
    results: Optional[Path] = typer.Option(None, help="Where <name>.json, <name>.md and the run ledger <name>.runs.jsonl go (default OUT/results)."),
    seeds: Optional[list[int]] = typer.Option(None, "--seed", help="Seeds to run (repeatable; default the spec's). The table shows every finished seed."),
    rows: Optional[str] = typer.Option(None, help="Comma-separated rows to run (default every row). The table shows every row with finished seeds."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override for every row run: key=value. Repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be trained, resumed or reused, and the CPU time."),
) -> None:
    """Reproduce a paper table: prepare the split, train each row over the seeds with its committed config,
    record each finished seed in the table's run ledger, write JSON and a Markdown table (mean ± std, Welch's p
    against the best baseline). A seed recorded with the same config and split is not trained again."""
    from dreamrec.bench import run_table

    try:
        result = run_table(table, data, out, results_dir=results, seeds=seeds or None,
                           rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None,
                           overrides=set_ or [], dry_run=dry_run, log=_echo)
    except (DreamrecError, ValueError) as e:
        _fail(e)
    if isinstance(result, str):
        typer.echo(result)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
