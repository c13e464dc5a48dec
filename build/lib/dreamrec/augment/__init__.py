"""Training-data augmentation: generate interactions with a diffusion model, then train any recommender.

* DiffuASR (Liu et al., CIKM 2023): :func:`train_diffuasr` fits the generator on the training split,
  :func:`augment_dataset` prepends ``M`` generated pre-order items to the selected training sequences.
  ``dreamrec augment DATA --out OUT --set M=10 ...`` does both from the command line.
"""
from dreamrec.augment.data import augment_dataset, selected, training_pairs
from dreamrec.augment.diffuasr import DiffuASRConfig, DiffuASRGenerator, diffuasr_config
from dreamrec.augment.sunet import SUNet
from dreamrec.augment.train import train_diffuasr

__all__ = [
    "DiffuASRConfig",
    "DiffuASRGenerator",
    "SUNet",
    "augment_dataset",
    "diffuasr_config",
    "selected",
    "train_diffuasr",
    "training_pairs",
]
