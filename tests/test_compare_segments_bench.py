"""benchmarks/compare_segments.py: the buckets add up to the run's own evaluation, the contributions to the
difference between the groups, and bad input is named before any evaluation."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from compare_segments import main  # noqa: E402

from dreamrec.config import RunConfig, TrainConfig  # noqa: E402
from dreamrec.train.run import train_run  # noqa: E402

SASREC = {"hidden": 16, "n_layers": 1, "n_heads": 1, "loss": "ce"}


def _train(tmp_path: Path, ds, seed: int) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        ds.save(data)
    out = tmp_path / "sasrec" / f"seed{seed}"
    cfg = RunConfig(model="sasrec", params=SASREC, train=TrainConfig(epochs=1, seed=seed, batch_size=128))
    train_run(cfg, data, out, progress=False, log=None, dataset=ds)
    return out


def test_segments_add_up(tmp_path, small_synthetic):
    runs = [_train(tmp_path, small_synthetic.dataset, s) for s in (0, 1, 2)]
    out = tmp_path / "out"
    main(["--data", str(tmp_path / "data"), "--group", "a", str(tmp_path / "sasrec" / "seed[01]"), "--group", "b", str(runs[2]),
          "--edges", "0", "1", "20", "--name", "t", "--out", str(out)])
    result = json.loads((out / "t.json").read_text())
    assert (out / "t.png").stat().st_size > 0
    assert result["runs"]["a"] == [str(runs[0]), str(runs[1])]  # the pattern, expanded
    for split in ("val", "test"):
        own = json.loads((runs[0] / "metrics.json").read_text())[split]
        rows = {r["segment"]: r for r in result["per_run"]["a"][0][split]}
        assert list(rows) == ["0", "1-19", "20+", "seen (1+)", "all"]
        assert rows["all"]["metrics"]["HR@20"] == pytest.approx(own["HR@20"])  # as training evaluated it
        buckets = [rows[s] for s in ("0", "1-19", "20+")]
        assert sum(b["n"] for b in buckets) == rows["all"]["n"] == own["n"]
        assert rows["seen (1+)"]["n"] == rows["1-19"]["n"] + rows["20+"]["n"]
        assert sum(b["share"] * b["metrics"].get("HR@20", 0.0) for b in buckets) == pytest.approx(own["HR@20"])
        comp = {r["segment"]: r for r in result["comparison"][split]}
        total = comp["all"]["difference"]["HR@20"]["mean"]
        parts = [comp[s]["difference"]["HR@20"]["contribution"] for s in ("0", "1-19", "20+") if comp[s]["n"]]
        assert sum(parts) == pytest.approx(total, abs=1e-12)
        assert comp["all"]["difference"]["HR@20"]["welch_p"] is None  # group b has one run


def test_bad_input_is_named(tmp_path, small_synthetic, capsys):
    run = str(_train(tmp_path, small_synthetic.dataset, 0))
    data = str(tmp_path / "data")
    for args, msg in ((["--group", "a", run], "exactly two"),
                      (["--group", "a", run, "--group", "a", run], "different labels"),
                      (["--group", "a", run, "--group", "b", str(tmp_path / "nope")], "not a run directory"),
                      (["--group", "a", run, "--group", "b", str(tmp_path / "nope*")], "not a run directory"),
                      (["--group", "a", run, "--group", "b", run, "--k", "0"], "--k")):
        with pytest.raises(SystemExit):
            main(["--data", data, *args, "--out", str(tmp_path / "o")])
        assert msg in capsys.readouterr().err
    with pytest.raises(ValueError, match="bucket edges"):
        main(["--data", data, "--group", "a", run, "--group", "b", run, "--edges", "1", "5", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing written on bad input
    from dreamrec.data.synthetic import SyntheticConfig, generate
    from dreamrec.errors import ArtifactError

    other = tmp_path / "other"
    generate(SyntheticConfig(n_users=50, n_items=30, n_topics=2, seed=1)).dataset.save(other)
    with pytest.raises(ArtifactError, match="item catalog differs"):
        main(["--data", str(other), "--group", "a", run, "--group", "b", run, "--out", str(tmp_path / "o")])
