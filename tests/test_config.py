import pytest

from dreamrec.config import apply_overrides, build_run_config, load_yaml
from dreamrec.errors import ConfigError


def test_overrides_route_keys():
    d = apply_overrides({"model": "sasrec"}, ["train.lr=0.01", "hidden=32", "params.loss=bce", "train.epochs=3"])
    cfg = build_run_config(d)
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 3
    assert cfg.params == {"hidden": 32, "loss": "bce"}


def test_bad_config_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="lr"):
        build_run_config({"model": "x", "train": {"lr": "fast"}}, "c.yaml")
    with pytest.raises(ConfigError, match="unknown_key"):
        build_run_config({"model": "x", "train": {"unknown_key": 1}}, "c.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
