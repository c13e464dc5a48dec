"""Issue 31: runs and datasets are never corrupted or silently replaced.

* ``train --resume`` checks the new settings against the run's before writing anything;
* writing into an existing output needs ``--overwrite`` and never deletes files dreamrec did not write;
* files and folders get the umask's permissions, and temporaries of killed writes are cleaned up;
* a model too large for memory is refused from its config, before anything is allocated.
"""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dreamrec.cli import app

runner = CliRunner()
TINY = ["--model", "sasrec", "--no-progress", "--set", "hidden=16", "--set", "n_layers=1",
        "--set", "train.epochs=2", "--set", "train.batch_size=64"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, small_synthetic):
    return small_synthetic.dataset.save(tmp_path_factory.mktemp("safety") / "data")


def _train(data: Path, out: Path, *extra):
    return invoke("train", "--data", data, "--out", out, *TINY, *extra)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path, data_dir):
    r = _train(data_dir, tmp_path / "run")
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


# ---- item 1: resume checks before it writes ----------------------------------------------------
def test_resume_with_another_model_is_refused_and_writes_nothing(finished_run, data_dir):
    from dreamrec.train.run import load_run

    before = _snapshot(finished_run)
    r = invoke("train", "--data", data_dir, "--out", finished_run, "--resume", "--no-progress",
               "--model", "gru4rec", "--set", "train.epochs=2")
    assert r.exit_code == 2
    assert "model: 'sasrec' -> 'gru4rec'" in r.output, r.output
    assert _snapshot(finished_run) == before
    assert load_run(finished_run).config.model == "sasrec"


def test_resume_names_every_changed_setting_in_one_error(finished_run, data_dir):
    before = _snapshot(finished_run)
    r = _train(data_dir, finished_run, "--resume", "--set", "hidden=32", "--set", "train.seed=123",
               "--set", "train.lr=0.01")
    assert r.exit_code == 2
    msg = r.output
    assert "params.hidden: 16 -> 32" in msg and "train.seed: 42 -> 123" in msg and "train.lr: 0.001 -> 0.01" in msg, msg
    assert _snapshot(finished_run) == before  # metrics.json still pairs the run's own val and test scores


def test_resume_allows_budget_settings_and_records_them(finished_run, data_dir):
    r = _train(data_dir, finished_run, "--resume", "--set", "train.epochs=3", "--set", "train.patience=20",
               "--set", "train.max_minutes=30", "--set", "train.threads=1")
    assert r.exit_code == 0, r.output
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["patience"] == 20
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3
    assert metrics["resumes"] == [{
        "after_epoch": 2,
        "changed": {"train.epochs": [2, 3], "train.patience": [10, 20], "train.max_minutes": [None, 30.0],
                    "train.threads": [None, 1]},
    }]
    assert json.loads((finished_run / "run.json").read_text())["resumes"] == metrics["resumes"]


def test_resume_allows_a_learning_rate_schedule_only_where_it_keeps_the_trained_epochs(finished_run, data_dir):
    """Epochs 1-2 are trained: a decay from epoch 3 on leaves them as they were, a decay after epoch 1 does not."""
    r = _train(data_dir, finished_run, "--resume", "--set", "train.lr_decay_step=1")
    assert r.exit_code == 2 and "train.lr_decay_step: None -> 1" in r.output and "epoch 2" in r.output, r.output
    r = _train(data_dir, finished_run, "--resume", "--set", "train.lr_decay_step=2", "--set", "train.epochs=3")
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (finished_run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == 3 and log[-1]["lr"] == pytest.approx(1e-4)


def test_resume_without_a_model_continues_under_the_runs_config(finished_run, data_dir):
    r = invoke("train", "--data", data_dir, "--out", finished_run, "--resume", "--no-progress",
               "--set", "train.epochs=3")
    assert r.exit_code == 0, r.output
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["model"] == "sasrec" and config["params"]["hidden"] == 16 and config["train"]["epochs"] == 3


def test_resume_on_another_catalog_is_refused(finished_run, tmp_path):
    from dreamrec.data.synthetic import SyntheticConfig, generate

    other = generate(SyntheticConfig(n_users=300, n_items=80, n_topics=4, seed=4)).dataset
    other.item_ids = other.item_ids.iloc[::-1].reset_index(drop=True)  # same size, other order
    before = _snapshot(finished_run)
    r = _train(other.save(tmp_path / "other"), finished_run, "--resume")
    assert r.exit_code == 2 and "item catalog" in r.output, r.output
    assert _snapshot(finished_run) == before


# ---- item 5: --overwrite, foreign files, --out against the input --------------------------------
def test_prepare_into_an_existing_dataset_needs_overwrite(tmp_path, small_synthetic):
    from dreamrec.data.dataset import PreparedDataset

    log = small_synthetic.interactions.rename(columns={"user": "user_id", "item": "item_id"})
    log.to_csv(tmp_path / "log.csv", index=False)
    args = ["prepare", tmp_path / "log.csv", "--format", "csv", "--out", tmp_path / "data"]
    assert invoke(*args).exit_code == 0
    r = invoke(*args, "--max-len", 7)
    assert r.exit_code == 2 and "already holds a prepared dataset" in r.output and "--overwrite" in r.output, r.output
    assert PreparedDataset.load(tmp_path / "data").max_len == 50
    r = invoke(*args, "--max-len", 7, "--overwrite")
    assert r.exit_code == 0, r.output
    assert PreparedDataset.load(tmp_path / "data").max_len == 7
    (tmp_path / "data" / "notes.txt").write_text("mine")  # a foreign file: --overwrite never deletes it
    r = invoke(*args, "--overwrite")
    assert r.exit_code == 2 and "notes.txt" in r.output, r.output
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    assert PreparedDataset.load(tmp_path / "data").max_len == 7


def test_augment_out_inside_the_input_is_refused(tmp_path, data_dir):
    r = invoke("augment", data_dir, "--out", data_dir / "aug")
    assert r.exit_code == 2 and "inside the input" in r.output, r.output
    assert not (data_dir / "aug").exists()


def test_train_out_and_the_dataset_folder_must_not_overlap(tmp_path, data_dir):
    before = _snapshot(data_dir)
    for out in (data_dir, data_dir / "run", data_dir.parent):
        r = _train(data_dir, out)
        assert r.exit_code == 2 and "dataset" in r.output and str(data_dir) in r.output, (out, r.output)
    assert _snapshot(data_dir) == before and not (data_dir / "run").exists()


def test_train_into_a_foreign_folder_is_refused_even_with_overwrite(tmp_path, data_dir):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("my own notes\n")
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for extra in ((), ("--overwrite",)):
        r = _train(data_dir, tmp_path / "mine", *extra)
        assert r.exit_code == 2 and "notes.txt" in r.output, r.output
    assert (tmp_path / "mine" / "config.yaml").read_text() == "my own notes\n"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "notes.txt"]


def test_train_overwrite_replaces_a_run_and_its_checkpoint(finished_run, data_dir):
    r = _train(data_dir, finished_run)
    assert r.exit_code == 2 and "already holds a trained run" in r.output and "--overwrite" in r.output
    r = _train(data_dir, finished_run, "--overwrite", "--set", "train.epochs=1", "--set", "hidden=8")
    assert r.exit_code == 0, r.output
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and "resumes" not in metrics
    state = json.loads((finished_run / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 1
    assert yaml.safe_load((finished_run / "config.yaml").read_text())["params"]["hidden"] == 8


# ---- item 9: permissions and stale temporaries ----------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_runs_and_datasets_get_the_umask_permissions(tmp_path, small_synthetic, umask_022):
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.train.run import train_run

    data = small_synthetic.dataset.save(tmp_path / "data")
    cfg = RunConfig(model="sasrec", params={"hidden": 8, "n_layers": 1}, train=TrainConfig(epochs=1))
    train_run(cfg, data, tmp_path / "run", progress=False, log=None)
    for root in (data, tmp_path / "run"):
        modes = _modes(root)
        wrong = {k: oct(m) for k, m in modes.items()
                 if m != (0o755 if (root / k).is_dir() else 0o644)}
        assert not wrong, wrong


def test_a_killed_save_leaves_temporaries_the_next_save_removes(tmp_path, small_synthetic):
    """A process killed (SIGKILL-like, no clean-up) in the middle of saving a dataset leaves a hidden
    temporary folder; the next save into the same parent removes it, and nothing else."""
    small_synthetic.dataset.save(tmp_path / "src")
    (tmp_path / ".my-own-hidden").mkdir()
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from dreamrec.data.dataset import PreparedDataset
        ds = PreparedDataset.load({str(tmp_path / "src")!r})
        real = np.save
        def dying_save(path, *a, **k):
            real(path, *a, **k)
            if "val_" in str(path):
                os._exit(9)
        np.save = dying_save
        ds.save({str(tmp_path / "data")!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")]
    assert leftovers, "the killed save left no temporary folder: the test did not kill it mid-save"
    small_synthetic.dataset.save(tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".my-own-hidden", "data", "src"]


def test_only_stale_temporaries_of_dreamrecs_naming_are_removed(tmp_path):
    """Removed: a temporary of a process that has ended, one older than STALE_AFTER_S (another host's, say).
    Kept: a live writer's fresh temporary, and hidden files of any other naming, however old."""
    import time

    from dreamrec.atomic import STALE_AFTER_S, atomic_write_text, temp_path

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = temp_path(tmp_path / "config.yaml").name.replace(f"-{os.getpid()}-", f"-{int(ended.stdout)}-")
    live = temp_path(tmp_path / "run.json")
    other_host = tmp_path / f".x.0000beef-{os.getpid()}-ab.dreamrec-tmp"
    for p in (tmp_path / dead, live, other_host, tmp_path / ".config.yaml.old-style", tmp_path / ".hidden"):
        p.write_text("")
    old = time.time() - STALE_AFTER_S - 60
    for p in (other_host, tmp_path / ".hidden"):
        os.utime(p, (old, old))
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, ".config.yaml.old-style", ".hidden", "metrics.json"])


# ---- item 10: a model too large for memory is refused before allocation ------------------------------
def test_a_config_too_large_for_memory_is_refused_on_load(finished_run, monkeypatch):
    from dreamrec.errors import ConfigError
    from dreamrec.train.run import load_run

    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["params"]["hidden"] = 4096  # about 200 MB of weights: over the 0.05 GB limit set here
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DREAMREC_MAX_MEMORY_GB", "0.05")
    with pytest.raises(ConfigError, match=r"params\.hidden=4096.*DREAMREC_MAX_MEMORY_GB"):
        load_run(finished_run)


def test_a_huge_config_fails_clearly_in_every_command(finished_run, data_dir):
    """hidden=50000000 would need tens of GB: every command says so instead of allocating it."""
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["params"]["hidden"] = 50_000_000
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    for args in (("evaluate", finished_run), ("recommend", finished_run, "--history", "1"), ("serve", finished_run)):
        r = invoke(*args)
        assert r.exit_code == 2 and "params.hidden=50000000" in r.output and "GB" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    r = invoke("train", "--data", data_dir, "--out", finished_run.parent / "big", "--model", "sasrec",
               "--set", "hidden=50000000", "--no-progress")
    assert r.exit_code == 2 and "params.hidden=50000000" in r.output, r.output
    assert not (finished_run.parent / "big").exists()


@pytest.mark.parametrize("name", ["sasrec", "dreamrec", "diffurec", "diffrec", "ddrm"])
def test_the_footprint_from_the_config_is_the_built_models(name):
    """Measured with the large tensors on the meta device (20,000 items x 64 is over META_FROM), yet exactly the
    real model's bytes."""
    from dreamrec.models import build_model
    from dreamrec.models.memory import META_FROM, model_footprint

    f = model_footprint(name, 20_000, 20)
    assert f is not None and f.largest_shape[0] * f.largest_shape[1] >= META_FROM
    model = build_model(name, 20_000, 20)
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    assert f.n_bytes == sum(t.numel() * t.element_size() for t in tensors)
