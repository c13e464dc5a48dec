"""train.init_from: a run starts from another run's tensors of the same name and shape (a SASRec run gives DDRM
its backbone); bad sources fail clearly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.models import build_model
from dreamrec.train.run import load_run, train_run
from dreamrec.train.warm_start import warm_start

SASREC = {"hidden": 16, "n_layers": 1, "n_heads": 2}


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory, small_synthetic) -> Path:
    tmp = tmp_path_factory.mktemp("warm")
    ds = small_synthetic.dataset
    out = tmp / "sasrec"
    cfg = RunConfig(model="sasrec", params=SASREC, train=TrainConfig(epochs=1, seed=1))
    train_run(cfg, ds.save(tmp / "data"), out, progress=False, log=None, dataset=ds)
    return out


def test_ddrm_gets_the_sasrec_backbone(sasrec_run: Path, small_synthetic) -> None:
    ds = small_synthetic.dataset
    sasrec = load_run(sasrec_run).model
    torch.manual_seed(0)
    ddrm = build_model("ddrm", ds.n_items, ds.max_len, SASREC)
    before = {k: v.clone() for k, v in ddrm.state_dict().items()}
    copied, total = warm_start(ddrm, sasrec_run, ds)
    assert set(copied) == set(sasrec.state_dict()) and total == len(before) > len(copied)
    after = ddrm.state_dict()
    for name, tensor in sasrec.state_dict().items():
        assert torch.equal(after[name], tensor), name
    untouched = [k for k in before if k not in copied]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)  # f_theta, f_psi keep their init


def test_init_from_is_applied_by_train_run_and_recorded(sasrec_run: Path, small_synthetic, tmp_path: Path) -> None:
    ds = small_synthetic.dataset
    messages: list[str] = []
    cfg = RunConfig(model="ddrm", params=SASREC, train=TrainConfig(epochs=0, seed=1, init_from=str(sasrec_run)))
    train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "ddrm", progress=False, log=messages.append, dataset=ds)
    n = len(load_run(sasrec_run).model.state_dict())
    assert f"initialised {n} of {len(load_run(tmp_path / 'ddrm').model.state_dict())} tensors from" in " ".join(messages)
    assert load_run(tmp_path / "ddrm").config.train.init_from == str(sasrec_run)


def test_bad_sources_fail_clearly(sasrec_run: Path, small_synthetic, tmp_path: Path) -> None:
    ds = small_synthetic.dataset
    with pytest.raises(ArtifactError, match="not a finished run"):
        warm_start(build_model("ddrm", ds.n_items, ds.max_len, SASREC), tmp_path, ds)
    with pytest.raises(ConfigError, match="has shape"):  # another width
        warm_start(build_model("ddrm", ds.n_items, ds.max_len, {**SASREC, "hidden": 8}), sasrec_run, ds)
    with pytest.raises(ConfigError, match="no tensor"):
        warm_start(build_model("popularity", ds.n_items, ds.max_len), sasrec_run, ds)
    other = small_synthetic.dataset.__class__.load(ds.save(tmp_path / "other"))
    other.item_ids = other.item_ids[::-1].reset_index(drop=True)
    with pytest.raises(ArtifactError, match="item catalog differs"):
        warm_start(build_model("ddrm", ds.n_items, ds.max_len, SASREC), sasrec_run, other)
