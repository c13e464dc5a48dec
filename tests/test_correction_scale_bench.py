"""benchmarks/dreamrec_correction_scale.py: the sweep re-evaluates a real run exactly as training did
at s = 1, chooses s on validation only, and names bad input."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from dreamrec_correction_scale import main  # noqa: E402

from dreamrec.config import RunConfig, TrainConfig  # noqa: E402
from dreamrec.errors import ArtifactError  # noqa: E402
from dreamrec.train.run import train_run  # noqa: E402

RESIDUAL = {"hidden": 16, "timesteps": 20, "denoiser": "mlp2", "denoiser_residual": True, "p_uncond": 0.0,
            "guidance_w": 0.0, "sampler": "onestep", "train_timesteps": "last", "x0_weight": 0.0, "ce_weight": 1.0}


def _train(tmp_path: Path, ds, params: dict, name: str) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        ds.save(data)
    cfg = RunConfig(model="dreamrec-ablation", params=params, train=TrainConfig(epochs=2, seed=3, batch_size=128))
    train_run(cfg, data, tmp_path / name / "seed3", progress=False, log=None, dataset=ds)
    return tmp_path / name / "seed3"


def test_sweep_of_a_trained_residual_run(tmp_path, small_synthetic):
    ds = small_synthetic.dataset
    run = _train(tmp_path, ds, RESIDUAL, "res")
    out = tmp_path / "out"
    main(["--runs", str(run), "--data", str(tmp_path / "data"), "--scales", "2", "1", "0",
          "--name", "t", "--exclude-seen", "--out", str(out)])
    result = json.loads((out / "t.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    points = {p["s"]: p for p in result["runs"][0]["points"]}
    assert sorted(points) == [0.0, 1.0, 2.0]
    for split in ("val", "test"):  # s = 1 is the run as trained and evaluated (same seed, same rows)
        assert points[1.0][split]["HR@20"] == pytest.approx(metrics[split]["HR@20"])
        assert set(points[1.0]) == {"s", "val", "test", "val_excl", "test_excl"}
    best_val = max(p["val"]["HR@20"] for p in points.values())
    assert points[result["chosen_scale"]]["val"]["HR@20"] == best_val  # chosen on validation
    assert (out / "t.png").stat().st_size > 0


def test_bad_input_is_named(tmp_path, small_synthetic):
    ds = small_synthetic.dataset
    plain = _train(tmp_path, ds, {k: v for k, v in RESIDUAL.items() if k != "denoiser_residual"}, "plain")
    with pytest.raises(SystemExit, match="denoiser_residual"):
        main(["--runs", str(plain), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    with pytest.raises(ArtifactError, match="not a finished run"):
        main(["--runs", str(tmp_path / "plain"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--scales must be >= 0"):
        main(["--runs", str(plain), "--data", str(tmp_path / "data"), "--scales", "-1", "--out", str(tmp_path / "o")])
