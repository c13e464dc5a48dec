"""benchmarks/training_curves.py: curves read from a real run directory, and bad input named."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from training_curves import labelled, plot, read_curve  # noqa: E402

from dreamrec.config import RunConfig, TrainConfig  # noqa: E402
from dreamrec.train.run import train_run  # noqa: E402


def test_curve_of_a_trained_run(tmp_path, small_synthetic):
    ds = small_synthetic.dataset
    cfg = RunConfig(model="sasrec", params={"hidden": 16, "n_layers": 1}, train=TrainConfig(epochs=3, seed=1))
    train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "run", progress=False, log=None, dataset=ds)
    curve = read_curve(tmp_path / "run", "HR@20")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert curve["epochs"] == [1, 2, 3]
    assert curve["val"] == [e["val"]["HR@20"] for e in log]
    assert curve["best_epoch"] == metrics["best_epoch"] == max(e["epoch"] for e in log if e.get("best"))
    assert curve["test"] == metrics["test"]["HR@20"]
    (tmp_path / "run" / "metrics.json").unlink()  # a copied run without its test metrics
    assert read_curve(tmp_path / "run", "HR@20")["test"] is None
    saved = tmp_path / "seed1.log.jsonl"  # a run's log kept on its own, as in benchmarks/results/survey_checks
    saved.write_text((tmp_path / "run" / "log.jsonl").read_text())
    assert read_curve(saved, "HR@20") == read_curve(tmp_path / "run", "HR@20")
    result = {"name": "t", "metric": "HR@20", "published": {"paper": 5.0},
              "runs": [{"label": "sasrec", **curve}]}
    plot(result, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0


def test_bad_input_is_named(tmp_path):
    assert labelled("DiffuRec, CPU=runs/x") == ("DiffuRec, CPU", "runs/x")
    with pytest.raises(Exception, match="LABEL=VALUE"):
        labelled("runs/x")
    with pytest.raises(SystemExit, match="no log.jsonl"):
        read_curve(tmp_path, "HR@20")
    with pytest.raises(SystemExit, match="no such log file"):
        read_curve(tmp_path / "missing.log.jsonl", "HR@20")
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0, "val": {"NDCG@20": 0.1}}) + "\n")
    with pytest.raises(SystemExit, match="no validation 'HR@20'"):
        read_curve(tmp_path, "HR@20")
