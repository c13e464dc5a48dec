"""A benchmark table's spec: ``configs/tables/<name>.yaml`` (:class:`TableSpec`, :func:`load_spec`) and the run
config of one of its rows at one seed (:func:`row_config`)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamrec.config import RunConfig, apply_overrides, build_run_config, load_yaml, validation_message
from dreamrec.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableRow(_Strict):
    name: str = Field(..., description="the row's label (a paper's name only where its method runs)")
    config: str = Field(..., description="run config (YAML), relative to the spec file")
    set: list[str] = Field(default_factory=list, description="key=value overrides of the config")
    baseline: bool = Field(False, description="a baseline: the rows are tested against the best of these")
    cpu_minutes: float | None = Field(None, gt=0, description="CPU minutes per seed on a 2-core machine (the plan)")
    published: dict[str, float] = Field(default_factory=dict, description="published numbers, percent, by metric")


class TableSpec(_Strict):
    name: str
    title: str
    format: Literal["csv", "tsv", "parquet", "recbole", "movielens", "dreamrec", "diffurec"]
    protocol: Literal["dreamrec", "loo"] = "loo"
    max_len: int | None = Field(None, ge=1, description="history window (default the protocol's)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["HR@20", "NDCG@20"], min_length=1)
    published_source: str | None = Field(None, description="where the published numbers come from")
    rows: list[TableRow] = Field(..., min_length=1)


def load_spec(path: str | Path) -> TableSpec:
    path = Path(path)
    data = load_yaml(path)
    try:
        spec = TableSpec(**data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, str(path))) from None
    names = [r.name for r in spec.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: row names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for row in spec.rows:
        if not (path.parent / row.config).is_file():
            raise ConfigError(f"{path}: row {row.name!r}: config {row.config!r} not found next to the spec")
    return spec


def row_config(spec_path: Path, row: TableRow, overrides: list[str], seed: int) -> RunConfig:
    """The run config of ``row`` at ``seed`` (the spec's overrides, then the command's)."""
    path = Path(spec_path).parent / row.config
    data = apply_overrides(load_yaml(path), [*row.set, *overrides, f"train.seed={seed}"])
    return build_run_config(data, str(path))
