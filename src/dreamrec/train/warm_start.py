"""Start a run from another run's weights (``train.init_from``).

Every tensor of the new model that has a tensor of the same name and shape in the other run's
``model.safetensors`` is copied; the rest keeps its initialisation. The one use it was made for: DDRM's paper
starts from a trained backbone, and a SASRec run's tensors (item table, positions, Transformer blocks) are
exactly DDRM's backbone tensors, so ``train.init_from: RUN_OF_SASREC`` gives DDRM that backbone. The item catalogs
must be equal (the item table's rows are items), and at least one tensor must match.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from dreamrec.data.dataset import PreparedDataset
from dreamrec.errors import ArtifactError, ConfigError


def same_item_catalog(items_file: Path, dataset: PreparedDataset) -> bool:
    """Whether a run's ``items.parquet`` lists ``dataset``'s items in the same order (its rows are item ids)."""
    return pd.read_parquet(items_file)["item_id"].tolist() == dataset.item_ids.tolist()


def warm_start(model: torch.nn.Module, run_dir: str | Path, dataset: PreparedDataset) -> tuple[list[str], int]:
    """Copy ``run_dir``'s tensors into ``model`` by name (see the module docstring); returns the names copied and
    the number of tensors the model has."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    weights, items = run_dir / "model.safetensors", run_dir / "items.parquet"
    if not weights.is_file() or not items.is_file():
        raise ArtifactError(f"train.init_from={run_dir}: not a finished run (needs model.safetensors and items.parquet)")
    if not same_item_catalog(items, dataset):
        raise ArtifactError(f"train.init_from={run_dir}: that run's item catalog differs from this dataset's")
    source = load_file(str(weights))
    own = model.state_dict()
    copied = []
    for name, tensor in own.items():
        if name not in source:
            continue
        if source[name].shape != tensor.shape:
            raise ConfigError(f"train.init_from={run_dir}: tensor {name!r} has shape {tuple(source[name].shape)} "
                              f"there and {tuple(tensor.shape)} here; give both models the same sizes")
        copied.append(name)
    if not copied:
        raise ConfigError(f"train.init_from={run_dir}: no tensor of that run has a name of this model's")
    with torch.no_grad():
        for name in copied:
            own[name].copy_(source[name].to(own[name].dtype))
    return copied, len(own)
