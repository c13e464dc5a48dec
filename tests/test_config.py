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


def test_config_errors_are_one_line_with_the_field_value_and_nearest_key():
    from dreamrec.models import build_model

    cfg = build_run_config(apply_overrides({"model": "sasrec"}, ["lr=0.01"]))
    with pytest.raises(ConfigError) as e:
        build_model(cfg.model, 10, 5, cfg.params)
    msg = str(e.value)
    assert "\n" not in msg and "pydantic" not in msg
    assert "lr=0.01" in msg and "did you mean train.lr?" in msg
    with pytest.raises(ConfigError, match=r"hiden=3 \(did you mean hidden\?\)"):
        build_model("sasrec", 10, 5, {"hiden": 3})
    with pytest.raises(ConfigError, match=r"train.lrr=0.1 \(did you mean train.lr\?\)"):
        build_run_config({"model": "sasrec", "train": {"lrr": 0.1}})
    with pytest.raises(ConfigError) as e:
        build_run_config({"model": "sasrec", "train": {"epochs": -1}}, "c.yaml")
    assert str(e.value) == "c.yaml: train.epochs=-1: Input should be greater than or equal to 0"
    with pytest.raises(ConfigError, match=r"^model 'sasrec': loss='foo': Input should be 'ce' or 'bce'$"):
        build_model("sasrec", 10, 5, {"loss": "foo"})
