"""DimeRec on the planted pattern of ``tests/test_dimerec.py::test_planted_pattern`` under one setting: test HR@20
(8 epochs, one thread), the trainer's item-table warnings, the final item norms and the HR@20 when the same trained
model ranks by normalised item embeddings.

    python benchmarks/dimerec_planted.py '{"item_init_std": 0.02}' [--seed 1] [--model sasrec]

The params are the model's (JSON); ``--seed`` replaces the torch and training seed 0 of ``tests/conftest.py``.
One CPU thread, one to three minutes per call.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("params", nargs="?", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="dimerec")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import conftest
    import dreamrec.config as config

    if args.seed:  # planted_run seeds torch and the trainer with 0
        base, seed = config.TrainConfig, args.seed

        class Seeded(base):  # type: ignore[misc, valid-type]
            def __init__(self, **kw):
                super().__init__(**{**kw, "seed": seed})

        config.TrainConfig = Seeded
        manual_seed = torch.manual_seed
        torch.manual_seed = lambda _: manual_seed(seed)
    from dreamrec.eval.evaluate import evaluate

    params = json.loads(args.params)
    start = time.time()
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hr, hr_pop, model, ds = conftest.planted_run(args.model, params, out)
    row = {"model": args.model, "params": params, "seed": args.seed, "HR@20": round(hr, 4),
           "popularity": round(hr_pop, 4), "seconds": round(time.time() - start, 1),
           "warnings": [str(w.message) for w in caught if "collapsed" in str(w.message)]}
    if hasattr(model, "item_embedding"):
        row["item_norm"] = round(model.item_embeddings()[1:].norm(dim=1).mean().item(), 3)
        table = model.item_embeddings
        model.item_embeddings = lambda: F.normalize(table(), dim=-1)
        torch.manual_seed(0)
        row["HR@20_normalised_items"] = round(evaluate(model, ds.test, max_len=ds.max_len, ks=(20,))["HR@20"], 4)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
