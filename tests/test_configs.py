"""Every committed config under configs/ (the paper settings) and benchmarks/configs/ (research variants) stays valid as the code changes: it parses, its train section
validates, and its model builds from its params (an unknown or mistyped key fails here, not hours into a
benchmark run)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dreamrec.config import ConfigError, build_run_config, load_yaml
from dreamrec.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in [*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "benchmarks" / "configs").rglob("*.yaml")]
                 if "tables" not in p.parts)


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 20, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_config_builds_its_model(path: Path) -> None:
    cfg = build_run_config(load_yaml(path), str(path))
    model = build_model(cfg.model, 40, cfg.train.max_len or 20, cfg.params)
    assert sum(p.numel() for p in model.parameters()) > 0 or cfg.model == "popularity"


def test_a_mistyped_param_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dreamrec\nparams: {hiden: 64}\n")
    with pytest.raises(ConfigError, match="hiden"):
        cfg = build_run_config(load_yaml(bad), str(bad))
        build_model(cfg.model, 40, 20, cfg.params)


def test_paper_model_configs_are_named_by_dataset() -> None:
    """configs/<model>/ holds the paper settings, one file per data set; research variants live in benchmarks/configs/."""
    for model in ("dreamrec", "reshead-ce"):
        names = {p.stem for p in (ROOT / "configs" / model).glob("*.yaml")}
        assert names <= {"zhihu", "beauty", "ml-1m"}, names


def test_config_headers_cite_no_work_sessions() -> None:
    """A config's comments say where a value comes from (a paper, a notes file, a result), not when it was found."""
    import re

    for path in CONFIGS:
        assert not re.search(r"\bsessions? \d", path.read_text(), flags=re.I), path
