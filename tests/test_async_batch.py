"""The HTTP side's request merging (dreamrec.serve.async_batch): requests that arrive while the model thread
is busy are answered by one call, each with its own answer (equal to its answer alone), requests of another
shape never share a call, and a request that fails (strict, unknown id) fails alone."""
import asyncio
import threading
from types import SimpleNamespace

import pytest

from dreamrec.serve.async_batch import RequestBatcher
from dreamrec.serve.recommender import UnknownItemsError


def _req(history, k=10, strict=False):
    return SimpleNamespace(history=list(history), k=k, intent=None, exclude_seen=False, strict=strict)


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_synthetic):
    from dreamrec.config import RunConfig, TrainConfig
    from dreamrec.serve import Recommender
    from dreamrec.train.run import train_run

    tmp = tmp_path_factory.mktemp("async_batch")
    ds = small_synthetic.dataset
    cfg = RunConfig(model="dreamrec", params={"hidden": 16, "timesteps": 20, "sampler": "ddpm"},
                    train=TrainConfig(epochs=1, seed=1, max_len=10))
    train_run(cfg, ds.save(tmp / "data"), tmp / "run", progress=False, log=None, dataset=ds)
    histories = [list(ds.to_original(h[h > 0])) for h in ds.test.history[:10]]
    return Recommender.load(tmp / "run", coalesce=False), histories


def _run_gated(batcher, reqs):
    """Submit reqs[0]; hold its model call until the others wait; return results (or errors) and call sizes."""
    answer, sizes, gate = batcher._answer, [], threading.Event()

    def gated(group):
        sizes.append(len(group))
        if len(sizes) == 1:
            gate.wait(30)
        return answer(group)

    batcher._answer = gated

    async def main():
        first = asyncio.ensure_future(batcher.submit(reqs[0]))
        while not sizes:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(r)) for r in reqs[1:]]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    return asyncio.run(main()), sizes


def test_waiting_requests_share_one_call_with_their_own_answers(served):
    rec, histories = served
    want = [rec.recommend(h, k=10).to_dict() for h in histories]
    got, sizes = _run_gated(RequestBatcher(rec), [_req(h) for h in histories])
    assert sizes == [1, len(histories) - 1]
    for g, w in zip(got, want):  # the same items; scores equal to float rounding (a batched product)
        _same(g, w)
    assert any(w["items"] != want[0]["items"] for w in want[1:])  # the answers do differ by history


def _same(got, want):
    assert got["items"] == want["items"]
    assert got["scores"] == pytest.approx(want["scores"], rel=1e-5, abs=1e-6)
    assert {k: v for k, v in got.items() if k != "scores"} == {k: v for k, v in want.items() if k != "scores"}


def test_shapes_never_mix_and_a_failing_request_fails_alone(served):
    rec, histories = served
    reqs = [_req(histories[0]), _req(histories[1], k=5), _req(histories[2]),
            _req([*histories[3], "no-such-item"], strict=True), _req(histories[4], strict=True)]
    got, sizes = _run_gated(RequestBatcher(rec), reqs)
    # reqs[0] alone; then the waiting ones by shape, in arrival order of each shape's first request: the k=5
    # request, the other non-strict k=10 one, the two strict ones (their merged call fails, then one by one)
    assert sizes == [1, 1, 1, 2, 1, 1]
    assert len(got[1]["items"]) == 5
    assert isinstance(got[3], UnknownItemsError)
    _same(got[4], rec.recommend(histories[4], k=10, strict=True).to_dict())
    _same(got[2], rec.recommend(histories[2], k=10).to_dict())
