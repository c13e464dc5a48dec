"""End to end through the command line: prepare -> train -> evaluate -> recommend."""
import json

import pytest
import torch
from typer.testing import CliRunner

from dreamrec.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_synthetic):
    tmp = tmp_path_factory.mktemp("cli")
    log = small_synthetic.interactions.rename(columns={"user": "uid", "item": "iid", "timestamp": "ts"})
    log.to_csv(tmp / "log.csv", index=False)
    r = invoke("prepare", tmp / "log.csv", "--format", "csv", "--out", tmp / "data",
               "--user-col", "uid", "--item-col", "iid", "--time-col", "ts", "--max-len", 20)
    assert r.exit_code == 0, r.output
    r = invoke("train", "--model", "sasrec", "--data", tmp / "data", "--out", tmp / "run", "--no-progress",
               "--set", "train.epochs=3", "--set", "hidden=16", "--set", "n_layers=1")
    assert r.exit_code == 0, r.output
    return tmp, log


def test_evaluate_json(trained):
    tmp, _ = trained
    r = invoke("evaluate", tmp / "run", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout.strip().splitlines()[-1])
    from dreamrec.data.dataset import PreparedDataset

    assert m["n"] == len(PreparedDataset.load(tmp / "data").test)
    assert 0.0 <= m["NDCG@20"] <= m["HR@20"] <= 1.0
    r2 = invoke("evaluate", tmp / "run", "--json", "--split", "val", "--data", tmp / "data")
    assert r2.exit_code == 0 and json.loads(r2.stdout.strip().splitlines()[-1])["split"] == "val"


def test_evaluate_by_frequency(trained):
    """--by-frequency: the buckets partition the rows, their share-weighted metrics give the overall ones,
    and the counts are the training data's; bad edges fail clearly."""
    import numpy as np

    from dreamrec.data.dataset import PreparedDataset

    tmp, _ = trained
    r = invoke("evaluate", tmp / "run", "--json", "--by-frequency", "--frequency-edges", "0,1,3")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout.strip().splitlines()[-1])
    segs = m["by_frequency"]
    assert [s["segment"] for s in segs] == ["0", "1-2", "3+"]
    ds = PreparedDataset.load(tmp / "data")
    c = ds.train_item_counts()[ds.test.target]
    assert [s["n"] for s in segs] == [int((c == 0).sum()), int(((c >= 1) & (c <= 2)).sum()), int((c >= 3).sum())]
    assert sum(s["share"] * s["metrics"]["HR@20"] for s in segs if s["n"]) == pytest.approx(m["HR@20"])
    plain = json.loads(invoke("evaluate", tmp / "run", "--json").stdout.strip().splitlines()[-1])
    assert plain["HR@20"] == m["HR@20"] and "by_frequency" not in plain
    text = invoke("evaluate", tmp / "run", "--by-frequency")
    assert text.exit_code == 0 and "training occurrences" in text.output and np.isfinite(m["NDCG@20"])
    for bad, msg in (("1,5", "start at 0"), ("0,a", "comma-separated integers")):
        r = invoke("evaluate", tmp / "run", "--by-frequency", "--frequency-edges", bad)
        assert r.exit_code != 0 and msg in r.output


def test_evaluate_on_another_catalog_fails_clearly(trained, tmp_path):
    from dreamrec.data.synthetic import SyntheticConfig, generate

    tmp, _ = trained
    generate(SyntheticConfig(n_users=50, n_items=30, n_topics=2, seed=1)).dataset.save(tmp_path / "other")
    r = invoke("evaluate", tmp / "run", "--data", tmp_path / "other")
    assert r.exit_code != 0 and "item catalog differs" in r.output


def test_recommend_single_and_batch(trained):
    tmp, log = trained
    known = log["iid"].unique().tolist()
    hist = ",".join(str(x) for x in known[:3])
    r = invoke("recommend", tmp / "run", "--history", hist + ",not-an-item", "--k", 7)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["items"]) == 7 and len(out["scores"]) == 7
    assert set(out["items"]) <= set(known)  # original ids come back
    assert out["scores"] == sorted(out["scores"], reverse=True)
    assert out["unknown"] == ["not-an-item"]
    inp = tmp / "in.jsonl"
    inp.write_text(json.dumps({"history": known[:2]}) + "\n" + json.dumps({"history": []}) + "\n")
    r = invoke("recommend", tmp / "run", "--input", inp, "--output", tmp / "out.jsonl", "--k", 5)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(len(x["items"]) == 5 for x in lines)


def test_bad_input_is_a_clear_error(trained, tmp_path):
    tmp, _ = trained
    r = invoke("train", "--model", "nope", "--data", tmp / "data", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    r = invoke("prepare", tmp_path / "bad.csv", "--format", "csv", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "bad.csv" in r.output and "user_id" in r.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")  # prepare replaces --out wholesale: refused, nothing lost
    r = invoke("prepare", tmp / "log.csv", "--format", "csv", "--out", tmp_path / "mine")
    assert r.exit_code == 2 and "not a prepared dataset" in r.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"history": [1]}\nnot json\n')
    r = invoke("recommend", tmp / "run", "--input", bad)
    assert r.exit_code == 2 and "row 2" in r.output
    r = invoke("train", "--model", "sasrec", "--data", tmp / "data", "--out", tmp / "run")
    assert r.exit_code == 2 and "already holds a trained run" in r.output
    (tmp_path / "dead" / "checkpoint").mkdir(parents=True)  # a run killed before it finished
    r = invoke("train", "--model", "sasrec", "--data", tmp / "data", "--out", tmp_path / "dead")
    assert r.exit_code == 2 and "unfinished run" in r.output and "--resume" in r.output
    r = invoke("train", "--model", "sasrec", "--data", tmp / "data", "--out", tmp_path / "r2", "--set", "bogus_param=1")
    assert r.exit_code == 2 and "bogus_param" in r.output


def test_help_for_every_command():
    for cmd in ("prepare", "train", "evaluate", "recommend", "demo", "info"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_model_window_wider_than_the_data_is_refused(trained, tmp_path):
    tmp, _ = trained
    r = invoke("train", "--model", "sasrec", "--data", tmp / "data", "--out", tmp_path / "r3", "--set", "train.max_len=500")
    assert r.exit_code == 2 and "exceeds the dataset's history window" in r.output


def test_sampler_options_from_the_command_line(trained, tmp_path, monkeypatch):
    """--correction-scale / --guidance-w reach the loaded model (evaluate, recommend); bad ones fail clearly."""
    from dreamrec.data.dataset import PreparedDataset
    from dreamrec.errors import ConfigError
    from dreamrec.eval.evaluate import evaluate as run_eval
    from dreamrec.train.run import load_run

    tmp, log = trained
    run = tmp_path / "dream"
    r = invoke("train", "--model", "dreamrec-ablation", "--data", tmp / "data", "--out", run, "--no-progress",
               "--set", "train.epochs=2", "--set", "hidden=16", "--set", "timesteps=10", "--set", "sampler=onestep",
               "--set", "denoiser=mlp2", "--set", "denoiser_residual=true", "--set", "ce_weight=1.0")
    assert r.exit_code == 0, r.output
    loaded = load_run(run, sampler_options={"correction_scale": 3.0, "guidance_w": 0.5, "eta": None})
    assert loaded.model.config.correction_scale == 3.0 and loaded.model.config.guidance_w == 0.5
    assert load_run(run).model.config.correction_scale == 1.0  # the saved run is untouched
    r = invoke("evaluate", run, "--json", "--correction-scale", 3, "--guidance-w", 0.5)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])
    want = run_eval(loaded.model, PreparedDataset.load(tmp / "data").split("test"),
                    batch_size=loaded.config.train.eval_batch_size, seed=loaded.config.train.seed)
    assert got["HR@20"] == pytest.approx(want["HR@20"]) and got["NDCG@20"] == pytest.approx(want["NDCG@20"])
    hist = ",".join(str(x) for x in log["iid"].unique().tolist()[:3])
    base = json.loads(invoke("recommend", run, "--history", hist, "--k", 5).stdout)
    scaled = invoke("recommend", run, "--history", hist, "--k", 5, "--correction-scale", 3)
    assert scaled.exit_code == 0, scaled.output
    assert json.loads(scaled.stdout)["scores"] != base["scores"]  # a 3x correction moves the query
    pytest.importorskip("fastapi")
    from dreamrec.serve.app import app_from_env

    monkeypatch.setenv("DREAMREC_RUN_DIR", str(run))  # what `dreamrec serve --correction-scale 3` hands its workers
    monkeypatch.setenv("DREAMREC_SAMPLER_OPTIONS", json.dumps({"guidance_w": None, "correction_scale": 3.0}))
    assert app_from_env().state.recommender.model.config.correction_scale == 3.0
    r = invoke("evaluate", tmp / "run", "--correction-scale", 2)  # SASRec: no sampler at all
    assert r.exit_code == 2 and "no diffusion sampler" in r.output
    with pytest.raises(ConfigError, match="no sampler option 'bogus'"):
        load_run(run, sampler_options={"bogus": 1})
    plain = tmp_path / "plain"
    r = invoke("train", "--model", "dreamrec", "--data", tmp / "data", "--out", plain, "--no-progress",
               "--set", "train.epochs=1", "--set", "hidden=16", "--set", "timesteps=10")
    assert r.exit_code == 0, r.output
    r = invoke("recommend", plain, "--history", hist, "--correction-scale", 2)
    assert r.exit_code == 2 and "no sampler option 'correction_scale'" in r.output  # the paper's model has none
    # --loop / --closed-form: the default (mlp1, DDPM over all T) is the closed form; --loop steps
    assert load_run(plain).model.output_law(torch.device("cpu"), torch.float32) is not None
    assert load_run(plain, sampler_options={"closed_form": False}).model.config.closed_form is False
    loop = invoke("recommend", plain, "--history", hist, "--k", 5, "--loop")
    closed = invoke("recommend", plain, "--history", hist, "--k", 5, "--closed-form")
    assert loop.exit_code == 0 and closed.exit_code == 0, loop.output + closed.output
    assert json.loads(closed.stdout) == json.loads(invoke("recommend", plain, "--history", hist, "--k", 5).stdout)
    assert json.loads(loop.stdout)["scores"] != json.loads(closed.stdout)["scores"]  # other noise draws
    r = invoke("evaluate", plain, "--json", "--loop")
    assert r.exit_code == 0, r.output
    r = invoke("evaluate", tmp / "run", "--loop")  # SASRec: no sampler
    assert r.exit_code == 2 and "no diffusion sampler" in r.output


def test_recommend_warns_when_no_history_id_is_in_the_catalog(trained):
    """Ids the catalog does not know (a forgotten prefix, say) are not silently answered: a warning on
    stderr names them and the answer given, and the answer is the popularity ranking, not all-zero scores."""
    tmp, log = trained
    r = runner.invoke(app, ["recommend", str(tmp / "run"), "--history", "1,2", "--k", "5"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["fallback"] == "popularity" and out["unknown"] == ["1", "2"]
    assert len(set(out["scores"])) > 1 or out["scores"][0] > 0
    assert "warning: none of the history's ids is in the catalog" in r.stderr and "popularity" in r.stderr
    known = str(log["iid"].iloc[0])
    r = runner.invoke(app, ["recommend", str(tmp / "run"), "--history", f"{known},nope", "--k", "5"])
    assert r.exit_code == 0 and "ignored 1 id(s) not in the catalog: 'nope'" in r.stderr
    r = runner.invoke(app, ["recommend", str(tmp / "run"), "--history", known, "--k", "5"])
    assert r.exit_code == 0 and "warning" not in r.stderr
