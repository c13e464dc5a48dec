"""Thread defaults: each process takes its share of the cores, a server worker one thread, never more."""
import pytest

from dreamrec import threads


def test_defaults_share_the_cores(monkeypatch):
    monkeypatch.delenv("DREAMREC_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.default_threads("train") == 8
    assert threads.default_threads("train", processes=4) == 2
    assert threads.default_threads("evaluate", processes=16) == 1
    assert threads.default_threads("serve") == threads.SERVE_THREADS == 1
    assert threads.default_threads("serve", processes=8) == 1
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.default_threads("train", processes=2) == 1


def test_the_environment_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv("DREAMREC_THREADS", "3")
    assert threads.default_threads("serve") == 3
    monkeypatch.setenv("DREAMREC_THREADS", "many")
    with pytest.raises(ValueError, match="DREAMREC_THREADS"):
        threads.default_threads("train")
    monkeypatch.setenv("DREAMREC_THREADS", "0")
    with pytest.raises(ValueError, match=">= 1"):
        threads.default_threads("train")
