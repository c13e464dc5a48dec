"""``dreamrec bench``: a table spec -> prepared split, runs over seeds (reused when done), JSON + Markdown with
mean ± std and Welch's p against the best baseline; ``--dry-run`` plans without training."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dreamrec.bench import summarise, load_spec, welch_p
from dreamrec.cli import app
from dreamrec.errors import ConfigError


@pytest.fixture()
def spec(tmp_path: Path, small_synthetic) -> tuple[Path, Path]:
    log = small_synthetic.interactions.rename(columns={"user": "user_id", "item": "item_id"})
    log.to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "pop.yaml").write_text("model: popularity\n")
    (tmp_path / "sas.yaml").write_text("model: sasrec\nparams: {hidden: 16, n_layers: 1}\ntrain: {epochs: 2}\n")
    (tmp_path / "table.yaml").write_text(
        "name: tiny\ntitle: Tiny table\nformat: csv\nprotocol: loo\nseeds: [0, 1]\nmetrics: [HR@20, NDCG@20]\n"
        "rows:\n"
        "  - {name: popularity, config: pop.yaml, baseline: true, cpu_minutes: 0.5}\n"
        "  - {name: sasrec, config: sas.yaml, cpu_minutes: 2, published: {HR@20: 12.5}}\n")
    return tmp_path / "table.yaml", tmp_path / "log.csv"


def test_bench_trains_writes_and_reuses(spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, log = spec
    runner = CliRunner()
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "sasrec" in r.stdout and "estimated CPU time: 5 minutes" in r.stdout  # 2 x 0.5 + 2 x 2

    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "out" / "results" / "tiny.json").read_text())
    assert rec["best_baseline"] == "popularity" and rec["rows"]["sasrec"]["seeds"] == [0, 1]
    for name in ("popularity", "sasrec"):
        runs = [json.loads((tmp_path / "out" / "runs" / "tiny" / name / f"seed{s}" / "metrics.json").read_text())
                for s in (0, 1)]
        values = [m["test"]["HR@20"] for m in runs]
        assert rec["rows"][name]["HR@20"]["values"] == values
        assert rec["rows"][name]["HR@20"]["std"] == pytest.approx(np.std(values, ddof=1))
    md = (tmp_path / "out" / "results" / "tiny.md").read_text()
    assert "| sasrec |" in md and "12.50" in md and "p vs popularity" in md

    # a second call reuses every finished seed: nothing trains
    import dreamrec.bench as bench

    monkeypatch.setattr(bench, "train_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"), "--dry-run"])
    assert "estimated CPU time: 0 minutes" in r.stdout
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"),
                            "--rows", "sasrec"])
    assert r.exit_code == 0, r.output
    # a larger epoch budget continues the finished runs from their checkpoints (a resume, recorded as one)
    monkeypatch.undo()
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"),
                            "--set", "train.epochs=3", "--rows", "sasrec", "--dry-run"])
    assert r.exit_code == 0 and "sasrec" in r.stdout, r.output
    assert r.stdout.split("sasrec", 1)[1].split()[:3] == ["0", "2", "0"], r.stdout  # train / resume / reuse
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"),
                            "--set", "train.epochs=3", "--rows", "sasrec"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "runs" / "tiny" / "sasrec" / "seed0" / "metrics.json").read_text())
    assert m["resumes"][-1]["changed"]["train.epochs"] == [2, 3], m.get("resumes")
    # a changed config does not silently reuse the old runs
    r = runner.invoke(app, ["bench", str(table), "--data", str(log), "--out", str(tmp_path / "out"),
                            "--set", "train.lr=0.01", "--rows", "sasrec"])
    assert r.exit_code == 2 and "another config" in r.output


def test_welch_p_by_hand_and_bad_specs(spec, tmp_path: Path) -> None:
    a, b = [0.10, 0.12, 0.11], [0.05, 0.06, 0.08]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    from scipy import stats

    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p([0.1], b) is None
    table, _ = spec
    s = load_spec(table)
    summary = summarise(s, {"popularity": [{"seed": 0, "HR@20": 0.1, "NDCG@20": 0.05}],
                            "sasrec": [{"seed": 0, "HR@20": 0.2, "NDCG@20": 0.1}]})
    assert summary["rows"]["sasrec"]["p_vs_best_baseline"] == {"HR@20": None, "NDCG@20": None}
    bad = tmp_path / "bad.yaml"
    bad.write_text(table.read_text().replace("config: sas.yaml", "config: missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_spec(bad)
    bad.write_text(table.read_text().replace("format: csv", "format: excel"))
    with pytest.raises(ConfigError, match="format='excel'"):
        load_spec(bad)


def _fail_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import dreamrec.bench as bench

    monkeypatch.setattr(bench, "train_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))


def test_the_ledger_outlives_the_run_directories(spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each finished seed is recorded beside the table; with the run directories gone, a recorded seed of the
    same config and split is reused (values unchanged), one of another config or split trains again."""
    import shutil

    from dreamrec.bench.ledger import read_ledger

    table, log = spec
    runner = CliRunner()
    results = tmp_path / "results"
    base = ["bench", str(table), "--data", str(log), "--results", str(results)]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    first = json.loads((results / "tiny.json").read_text())
    ledger = read_ledger(results / "tiny.runs.jsonl")
    assert sorted(ledger) == [("popularity", 0), ("popularity", 1), ("sasrec", 0), ("sasrec", 1)]
    m = json.loads((tmp_path / "a" / "runs" / "tiny" / "sasrec" / "seed1" / "metrics.json").read_text())
    assert ledger[("sasrec", 1)]["test"] == m["test"] and ledger[("sasrec", 1)]["config"]["train"]["seed"] == 1
    md = (results / "tiny.md").read_text()
    assert "seeds finished" in md
    # the seeds' own machine is named, with how many seeds it trained (4 here, all on this machine)
    assert f"on {ledger[('sasrec', 1)]['machine']} (4 seeds)" in md

    # another machine, or the same one after its run directories were lost: nothing trains
    shutil.rmtree(tmp_path / "a")
    _fail_training(monkeypatch)
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--dry-run"])
    assert "estimated CPU time: 0 minutes" in r.stdout, r.stdout
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "from the ledger" in r.output
    again = json.loads((results / "tiny.json").read_text())
    assert again["rows"] == first["rows"]

    # another config: the record does not stand in for it (and it is no error: there is no run directory)
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--set", "train.lr=0.01", "--rows", "sasrec",
                            "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.stdout.split("sasrec", 1)[1].split()[:3] == ["2", "0", "0"], r.stdout  # train / resume / reuse
    # another split (a record's fingerprint differs): trains again
    text = (results / "tiny.runs.jsonl").read_text()
    (results / "tiny.runs.jsonl").write_text(text.replace('"dataset": "sha256:', '"dataset": "sha256:0'))
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--dry-run"])
    assert "estimated CPU time: 5 minutes" in r.stdout, r.stdout
    # a damaged ledger is named, not skipped
    (results / "tiny.runs.jsonl").write_text(text + "{not json\n")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--dry-run"])
    assert r.exit_code == 2 and "tiny.runs.jsonl:5" in r.output, r.output


def test_a_table_shows_every_finished_seed_not_only_this_calls(spec, tmp_path: Path) -> None:
    """``--rows`` and ``--seed`` choose what trains; the table holds every recorded seed of the spec's rows."""
    table, log = spec
    runner = CliRunner()
    base = ["bench", str(table), "--data", str(log), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o")]
    r = runner.invoke(app, [*base, "--rows", "popularity"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert list(rec["rows"]) == ["popularity"]
    r = runner.invoke(app, [*base, "--rows", "sasrec", "--seed", "1"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert rec["rows"]["popularity"]["seeds"] == [0, 1] and rec["rows"]["sasrec"]["seeds"] == [1]
    assert rec["best_baseline"] == "popularity" and rec["ledger"] == "tiny.runs.jsonl"
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "| sasrec | " in md and "| 1 |" in md  # one seed, shown as one


def test_dataset_fingerprint_follows_the_split(small_synthetic, tmp_path: Path) -> None:
    from dreamrec.bench.ledger import dataset_fingerprint
    from dreamrec.config import PrepareConfig
    from dreamrec.data.dataset import PreparedDataset
    from dreamrec.data.prepare import prepare_source

    log = small_synthetic.interactions.rename(columns={"user": "user_id", "item": "item_id"})
    log.to_csv(tmp_path / "log.csv", index=False)
    a = prepare_source(tmp_path / "log.csv", "csv", PrepareConfig(protocol="loo"))
    b = prepare_source(tmp_path / "log.csv", "csv", PrepareConfig(protocol="loo"))
    a.save(tmp_path / "saved")
    assert dataset_fingerprint(a) == dataset_fingerprint(b) == dataset_fingerprint(PreparedDataset.load(tmp_path / "saved"))
    b.test.target[0] = b.test.target[0] % b.n_items + 1  # one test answer changed
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    c = prepare_source(tmp_path / "log.csv", "csv", PrepareConfig(protocol="loo", max_len=5))
    assert dataset_fingerprint(a) != dataset_fingerprint(c)


def test_a_table_is_not_rewritten_without_seeds_it_shows(spec, tmp_path: Path) -> None:
    """A table whose seeds have no run directory or record (written before the ledger, or its runs lost) is not
    overwritten by a call that would drop them; the whole table may still be rerun."""
    table, log = spec
    runner = CliRunner()
    results = tmp_path / "results"
    base = ["bench", str(table), "--data", str(log), "--results", str(results), "--out", str(tmp_path / "o")]
    assert runner.invoke(app, [*base, "--rows", "popularity"]).exit_code == 0
    (results / "tiny.runs.jsonl").unlink()
    import shutil

    shutil.rmtree(tmp_path / "o" / "runs")
    before = (results / "tiny.json").read_text()
    r = runner.invoke(app, [*base, "--rows", "sasrec", "--dry-run"])
    assert r.exit_code == 2 and "popularity seed 0, popularity seed 1" in r.output, r.output
    assert (results / "tiny.json").read_text() == before
    r = runner.invoke(app, [*base, "--rows", "popularity"])  # the seeds it shows, trained again
    assert r.exit_code == 0, r.output


def test_a_seed_its_time_budget_stopped_is_continued_not_tabled(spec, tmp_path: Path) -> None:
    """``train.max_minutes`` stopping a seed leaves it out of the table and the ledger; the next call resumes it."""
    from dreamrec.bench.ledger import read_ledger

    table, log = spec
    runner = CliRunner()
    base = ["bench", str(table), "--data", str(log), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o"),
            "--rows", "sasrec", "--seed", "0"]
    r = runner.invoke(app, [*base, "--set", "train.max_minutes=0.000001"])
    assert r.exit_code == 0, r.output
    assert "stopped by train.max_minutes" in r.output
    assert read_ledger(tmp_path / "results" / "tiny.runs.jsonl") == {}
    assert "sasrec" not in json.loads((tmp_path / "results" / "tiny.json").read_text())["rows"]
    r = runner.invoke(app, [*base, "--dry-run"])
    assert r.stdout.split("sasrec", 1)[1].split()[:3] == ["0", "1", "0"], r.stdout  # train / resume / reuse
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    assert list(read_ledger(tmp_path / "results" / "tiny.runs.jsonl")) == [("sasrec", 0)]
