"""The benchmark seed cache (benchmarks/bench.py): which finished seeds stand in for a requested run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import _cache_key, same_run  # noqa: E402


def _config(**train):
    return {"model": "sasrec", "params": {"hidden": 16}, "train": {"epochs": 5, "seed": 0, **train}}


def test_device_and_threads_do_not_matter_but_hyperparameters_do():
    done = {"config": _config(device="cuda", threads=1)}
    assert same_run(done, _cache_key(_config(device="cpu", threads=2)))
    assert same_run({"config": _config(compile=True)}, _cache_key(_config()))  # torch.compile: same run
    assert not same_run(done, _cache_key(_config(lr=0.5)))
    assert not same_run({"config": _config(precision="bf16")}, _cache_key(_config()))


def test_a_budget_counts_only_where_it_stopped_the_run():
    unbound = {"config": _config(max_minutes=12), "stopped_by_budget": False}
    assert same_run(unbound, _cache_key(_config()))
    assert same_run(unbound, _cache_key(_config(max_minutes=3)))
    stopped = {"config": _config(max_minutes=12), "stopped_by_budget": True}
    assert same_run(stopped, _cache_key(_config(max_minutes=12)))
    assert not same_run(stopped, _cache_key(_config()))
    assert not same_run(stopped, _cache_key(_config(max_minutes=30)))


def test_exact_implementation_options_are_not_part_of_the_key():
    diffurec = lambda **p: {"model": "diffurec", "params": {"hidden": 16, **p}, "train": {"epochs": 5}}  # noqa: E731
    assert same_run({"config": diffurec(trim_padding=True)}, _cache_key(diffurec(trim_padding="auto")))
    assert not same_run({"config": diffurec(n_blocks=1)}, _cache_key(diffurec(n_blocks=2)))
