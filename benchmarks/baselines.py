"""Table: classic baselines (popularity, SASRec CE / BCE, GRU4Rec) on Zhihu, Beauty and ML-1M.

    python benchmarks/baselines.py --zhihu DIR --beauty beauty.pkl --ml1m ml-1m.pkl --seeds 0 1 2

Zhihu keeps the DreamRec authors' split (window 10); Beauty and ML-1M keep the DiffuRec
leave-one-out split with history window 50 (DiffuRec's max_len; the published SASRec numbers
quoted beside them, Beauty 8.98 % and ML-1M 28.32 % HR@20, come from the DiffuRec paper's table.
SASRec's own paper used 200 on ML-1M; set ``SOURCES`` to change it).
Configs: ``configs/<model>/<dataset>[-variant].yaml`` (see ``BASELINES``). Results: ``benchmarks/results/``.
Prepared data goes to ``<work>/data/<dataset>`` and is reused only when it was prepared from the
same source file and format with the same window (:func:`ensure_prepared`); otherwise it is
prepared again. benchmarks/diffurec_loo.py uses the same data, names and work folder, so the two
scripts share their cached seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, ROOT, run_variant  # noqa: E402

from dreamrec.config import PrepareConfig  # noqa: E402
from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.data.prepare import prepare_source  # noqa: E402
from dreamrec.errors import DreamrecError  # noqa: E402

CONFIGS = ROOT.parent / "configs"
# result variant -> its config, relative to configs/ ({d} = the dataset); variants without a file are skipped
BASELINES = {
    "popularity": "popularity/{d}.yaml",
    "gru4rec": "gru4rec/{d}.yaml",
    "caser": "caser/{d}.yaml",
    "cl4srec": "cl4srec/{d}.yaml",
    "sasrec-bce": "sasrec/{d}.yaml",
    "sasrec-ce": "sasrec/{d}-ce.yaml",
    "sasrec-ce-b2048": "sasrec/{d}-ce-b2048.yaml",
    "sasrec-ce-b2048-do0.6": "sasrec/{d}-ce-b2048-do0.6.yaml",
}


def baseline_configs(dataset: str) -> list[tuple[str, Path]]:
    """(variant, config path) of every baseline committed for ``dataset``, by variant name."""
    found = [(v, CONFIGS / rel.format(d=dataset)) for v, rel in BASELINES.items()]
    return sorted((v, p) for v, p in found if p.exists())
SOURCES = {"zhihu": ("dreamrec", None), "beauty": ("diffurec", 50), "ml-1m": ("diffurec", 50)}


def ensure_prepared(src: Path, fmt: str, window: int | None, data_dir: Path) -> Path:
    """``data_dir`` holding ``src`` (format ``fmt``) prepared with history window ``window``.

    A dataset already there is reused only if its ``meta.json`` says it came from the same source
    file in the same format and its ``max_len`` equals ``window`` (``None``: the source's own
    window, as for the DreamRec split); anything else is prepared again, replacing it.
    """
    if (data_dir / "meta.json").exists():
        try:
            ds = PreparedDataset.load(data_dir)
        except DreamrecError as e:
            reason = f"cannot be loaded ({e})"
        else:
            info = ds.info or {}
            same_src = "source" in info and Path(info["source"]).resolve() == Path(src).resolve()
            if info.get("format") != fmt:
                reason = f"it was prepared from format {info.get('format')!r}, not {fmt!r}"
            elif not same_src:
                reason = f"it was prepared from {info.get('source')!r}, not {str(src)!r}"
            elif window is not None and ds.max_len != window:
                reason = f"its history window is {ds.max_len}, not {window}"
            else:
                return data_dir
        print(f"re-preparing {data_dir}: {reason}", flush=True)
    prepare_source(src, fmt, PrepareConfig(protocol="loo", max_len=window)).save(data_dir)
    return data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhihu", type=Path, help="DreamRec Zhihu split directory (*_data.df)")
    ap.add_argument("--beauty", type=Path, help="DiffuRec beauty.pkl")
    ap.add_argument("--ml1m", type=Path, help="DiffuRec ml-1m.pkl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", help="config stems to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="prepared data and run directories")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra key=value overrides")
    ap.add_argument("--results", type=Path, default=RESULTS, help="result JSON folder (default benchmarks/results)")
    args = ap.parse_args()
    paths = {"zhihu": args.zhihu, "beauty": args.beauty, "ml-1m": args.ml1m}
    for name, src in paths.items():
        if src is None:
            continue
        fmt, window = SOURCES[name]
        data_dir = ensure_prepared(src, fmt, window, args.work / "data" / name)
        for variant, cfg in baseline_configs(name):
            if args.variants and variant not in args.variants:
                continue
            print(f"== {name} / {variant}", flush=True)
            run_variant(dataset_name=name, data_dir=data_dir, config_path=cfg, variant=variant, seeds=args.seeds,
                        runs_dir=args.work / "runs", results_dir=args.results, overrides=args.overrides)


if __name__ == "__main__":
    main()
