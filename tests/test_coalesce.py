"""Request coalescing (dreamrec.serve.coalesce): concurrent calls merged into one model call.

Checks that each job is answered with its own result, that waiting jobs are merged, that jobs of
different shapes never share a call, that a call's size is bounded, that an error reaches only the
job that caused it, and that a served model answers concurrent requests exactly as it answers
them one at a time.
"""
import threading
import time

import pytest

from dreamrec.serve.coalesce import Coalescer


def _wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.001)


def _submit_all(c, jobs):
    """Submit jobs[0] first; while its call runs, submit the rest from their own threads."""
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def go(i):
        try:
            results[i] = c(jobs[i])
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    threads[0].start()
    _wait_for(lambda: c._busy)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def _gated(run, n_waiting):
    """A run_many whose first call holds until ``n_waiting`` further jobs are queued."""
    calls = []
    state = {}

    def run_many(jobs):
        calls.append(list(jobs))
        if len(calls) == 1:
            _wait_for(lambda: len(state["c"]._pending) >= n_waiting)
        return [run(j) for j in jobs]

    return run_many, calls, state


def test_waiting_jobs_share_one_call_and_each_gets_its_own_answer():
    run_many, calls, state = _gated(lambda j: j * 10, n_waiting=7)
    c = state["c"] = Coalescer(run_many)
    results, errors = _submit_all(c, list(range(8)))
    assert errors == [None] * 8
    assert results == [j * 10 for j in range(8)]
    assert [len(b) for b in calls] == [1, 7]
    assert c.calls == 2 and c.jobs == 8 and not c._busy and not c._pending


def test_jobs_of_another_shape_never_share_a_call_and_size_is_bounded():
    run_many, calls, state = _gated(lambda j: j[1], n_waiting=7)
    c = state["c"] = Coalescer(run_many, key=lambda j: j[0], size=lambda j: j[2], max_size=4)
    # (shape, value, rows)
    jobs = [("a", 0, 1), ("a", 1, 2), ("b", 2, 1), ("a", 3, 2), ("b", 4, 1), ("a", 5, 1), ("b", 6, 5), ("a", 7, 1)]
    results, errors = _submit_all(c, jobs)
    assert errors == [None] * 8
    assert results == list(range(8))
    for batch in calls:
        assert len({j[0] for j in batch}) == 1
        assert len(batch) == 1 or sum(j[2] for j in batch) <= 4
    assert sorted(j[1] for b in calls for j in b) == list(range(8))  # every job computed exactly once


def test_an_error_reaches_only_the_job_that_caused_it():
    def run(j):
        if j == 3:
            raise ValueError("bad job 3")
        return -j

    run_many, calls, state = _gated(run, n_waiting=5)
    c = state["c"] = Coalescer(run_many)
    results, errors = _submit_all(c, list(range(6)))
    assert isinstance(errors[3], ValueError) and "bad job 3" in str(errors[3])
    assert [r for i, r in enumerate(results) if i != 3] == [0, -1, -2, -4, -5]
    assert [e for i, e in enumerate(errors) if i != 3] == [None] * 5
    assert not c._busy  # the coalescer is idle again, not stuck after the error
    assert c(9) == -9


def test_max_size_must_be_positive():
    with pytest.raises(ValueError, match="max_size"):
        Coalescer(lambda jobs: jobs, max_size=0)


def test_a_served_model_answers_concurrent_requests_as_it_answers_them_alone(tmp_path, small_synthetic):
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.serve import Recommender
    from dreamrec.train.run import train_run

    ds = small_synthetic.dataset
    cfg = RunConfig(model="dreamrec", params={"hidden": 16, "timesteps": 20, "sampler": "ddpm"},
                    train=TrainConfig(epochs=1, seed=1, max_len=10))
    train_run(cfg, ds.save(tmp_path / "data"), tmp_path / "run", progress=False, log=None, dataset=ds)
    histories = [ds.to_original(h[h > 0]) for h in ds.test.history[:12]]
    alone = Recommender.load(tmp_path / "run", coalesce=False)
    want = [alone.recommend(h, k=10) for h in histories]

    rec = Recommender.load(tmp_path / "run")
    rank_many = rec._rank_many
    sizes = []

    def slow_first(jobs):
        sizes.append(len(jobs))
        if len(sizes) == 1:
            _wait_for(lambda: len(rec._coalescer._pending) >= len(histories) - 1)
        return rank_many(jobs)

    rec._coalescer._run_many = slow_first
    results = [None] * len(histories)

    def go(i):
        results[i] = rec.recommend(histories[i], k=10)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(histories))]
    threads[0].start()
    _wait_for(lambda: rec._coalescer._busy)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert sizes == [1, len(histories) - 1]  # the waiting requests shared one model call
    for r, w in zip(results, want):
        assert r.items == w.items
        assert r.scores == pytest.approx(w.scores, rel=1e-5, abs=1e-6)
    assert any(w.items != want[0].items for w in want[1:])  # the answers do differ by history
