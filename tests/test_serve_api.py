"""The HTTP app, in-process (TestClient), plus one real `dreamrec serve` on a free loopback port."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.serve import Recommender
from dreamrec.serve.app import MAX_BATCH, create_app
from dreamrec.train.run import train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_synthetic):
    tmp = tmp_path_factory.mktemp("serve")
    ds = small_synthetic.dataset
    data_dir = ds.save(tmp / "data")
    out = {}
    for name, params in (("sasrec", {"hidden": 16, "n_layers": 1}), ("popularity", {})):
        cfg = RunConfig(model=name, params=params, train=TrainConfig(epochs=1, seed=1))
        train_run(cfg, data_dir, tmp / name, progress=False, log=None, dataset=ds)
        out[name] = tmp / name
    return out


IDREAMREC = dict(text_encoder="hashing:16", hidden=16, n_layers=1, n_heads=2, timesteps=20, beta_end=0.2,
                 intent_source="topic", guidance_w=1.0, intent_rho=1.0, sampler="ddpm")


@pytest.fixture(scope="module")
def intent_run(tmp_path_factory, small_synthetic):
    """A tiny iDreamRec run (intent-aware, sampled) and its text cache folder."""
    tmp = tmp_path_factory.mktemp("serve_intent")
    ds = small_synthetic.dataset
    cache = tmp / "cache"
    cfg = RunConfig(model="idreamrec", params={**IDREAMREC, "text_cache_dir": str(cache)},
                    train=TrainConfig(epochs=1, seed=1, max_len=10))
    train_run(cfg, ds.save(tmp / "data"), tmp / "run", progress=False, log=None, dataset=ds)
    return tmp / "run", cache


def test_lone_surrogate_intent_is_answered_and_the_connection_survives(intent_run, small_synthetic):
    """Issue 31: ``"\\ud800 jazz"`` (valid JSON, no UTF-8) gave a 500 from the text cache's hash."""
    run, _ = intent_run
    rec = Recommender.load(run)
    assert rec.recommend([], k=3, intent="\ud800 jazz").items  # Python
    with TestClient(create_app(rec), raise_server_exceptions=False) as c:
        body = b'{"history": [], "k": 3, "intent": "\\ud800 jazz"}'
        r = c.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        batch = (b'{"histories": [{"history": [], "intent": "\\ud800"}, {"intent": "\\udfff jazz \\ud800"}],'
                 b' "k": 3}')
        r = c.post("/recommend/batch", content=batch, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert c.get("/health").status_code == 200


def test_request_intents_do_not_grow_the_disk_cache(intent_run):
    """Issue 31: every distinct intent text used to be written to the disk cache as a .npy."""
    run, cache = intent_run
    before = sorted(cache.rglob("*.npy"))
    assert before  # the catalog's texts were cached at training time
    with TestClient(create_app(Recommender.load(run))) as c:
        for i in range(40):
            r = c.post("/recommend", json={"history": [], "k": 2, "intent": f"anonymous request {i}"})
            assert r.status_code == 200
    assert sorted(cache.rglob("*.npy")) == before


def test_405_has_allow_head_works_and_types_are_strict(client):
    """Issue 31 (schemathesis ST204): 405 carries ``Allow``; GET routes answer HEAD; ``k`` and
    ``strict``/``exclude_seen`` take JSON integers and booleans only, as the Python API does."""
    r = client.get("/recommend")
    assert r.status_code == 405 and r.headers.get("allow") == "POST"
    r = client.put("/health")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    r = client.head("/health")
    assert r.status_code == 200 and r.content == b""
    assert client.head("/metrics").status_code == 200
    for bad in ({"k": True}, {"k": "5"}, {"k": 5.5}, {"strict": 0}, {"strict": "true"}, {"exclude_seen": 1}):
        r = client.post("/recommend", json={"history": [], **bad})
        assert r.status_code == 422, (bad, r.status_code, r.text)
        r = client.post("/recommend/batch", json={"histories": [[]], **bad})
        assert r.status_code == 422, (bad, r.status_code, r.text)
    assert client.post("/recommend", json={"history": [], "k": 5, "strict": True}).status_code == 200
    # a JSON Schema integer may be written 5.0 (schemathesis sends such): k and integer ids accept it
    ids = [x for x in client.app.state.recommender._ids.tolist()[:2] if isinstance(x, int)]
    assert ids  # the synthetic catalog has integer ids
    r = client.post("/recommend", json={"history": [float(x) for x in ids], "k": 5.0})
    assert r.status_code == 200 and len(r.json()["items"]) == 5 and r.json()["unknown"] == []


@pytest.fixture(scope="module")
def client(runs):
    app = create_app(Recommender.load(runs["sasrec"]), max_body_bytes=20_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(runs):
    return Recommender.load(runs["sasrec"])._ids.tolist()


def test_recommend_original_ids_and_scores(client, catalog):
    r = client.post("/recommend", json={"history": catalog[:3], "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 7 and set(body["items"]) <= set(catalog)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["unknown"] == [] and body["truncated"] is False
    # string ids match integer catalog ids, and the answer is the same
    r2 = client.post("/recommend", json={"history": [str(x) for x in catalog[:3]], "k": 7})
    assert r2.json()["items"] == body["items"]


def test_unknown_ids_reported_or_rejected(client, catalog):
    r = client.post("/recommend", json={"history": [catalog[0], "nope", 10**30], "k": 5})
    assert r.status_code == 200 and r.json()["unknown"] == ["nope", 10**30]
    r = client.post("/recommend", json={"history": [catalog[0], "nope"], "strict": True})
    assert r.status_code == 404 and r.json()["unknown"] == ["nope"]  # well formed; the item does not exist


def test_edge_cases_never_5xx(client, catalog):
    assert len(client.post("/recommend", json={"history": []}).json()["items"]) == 20  # no-context answer
    assert len(client.post("/recommend", json={"history": [], "k": 1000}).json()["items"]) == len(catalog)
    long = client.post("/recommend", json={"history": catalog * 3, "k": 5}).json()
    assert long["truncated"] is True and len(long["items"]) == 5
    seen = client.post("/recommend", json={"history": catalog[:10], "k": 1000, "exclude_seen": True}).json()
    assert not set(seen["items"]) & set(catalog[:10]) and len(seen["items"]) == len(catalog) - 10
    for bad in ({"history": [], "k": 0}, {"history": [], "k": -3}, {"history": [], "k": 10**6},
                {"history": "abc"}, {"history": [1.5]}, {"history": [[1]]}, {"history": [True]},
                {"history": [], "k": "x"}, {"history": [], "bogus": 1}, {"history": [], "intent": "cheap shoes"}):
        r = client.post("/recommend", json=bad)
        assert r.status_code == 422, (bad, r.status_code, r.text)
    r = client.post("/recommend", content=b'{"history": [1, 2', headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/recommend", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/recommend", content=json.dumps({"history": list(range(10_000))}))
    assert r.status_code == 413
    lone_surrogate = b'{"history": ["\\ud800"]}'  # valid JSON, not encodable as UTF-8: echoed escaped
    r = client.post("/recommend", content=lone_surrogate, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["unknown"] == ["\ud800"]
    assert client.get("/nowhere").status_code == 404
    assert client.get("/recommend").status_code == 405


def test_intent_rejected_by_model_without_intent(runs):
    rec = Recommender.load(runs["sasrec"])
    assert rec.recommend([], k=3, intent="   ").items  # blank intent = no intent
    with pytest.raises(ValueError, match="does not take an intent"):
        rec.recommend([], k=3, intent="something warm")


def test_batch(client, catalog):
    r = client.post("/recommend/batch", json={"histories": [catalog[:2], [], ["zzz"]], "k": 4})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [len(x["items"]) for x in res] == [4, 4, 4] and res[2]["unknown"] == ["zzz"]
    single = client.post("/recommend", json={"history": catalog[:2], "k": 4}).json()
    assert res[0]["items"] == single["items"]
    assert client.post("/recommend/batch", json={"histories": [[]] * (MAX_BATCH + 1)}).status_code == 422
    assert client.post("/recommend/batch", json={"histories": [[], []], "intents": [None]}).status_code == 422


def test_request_schema_is_the_served_models(client, intent_run):
    """A model without intents has only null to give as one (so schema-valid requests are answered);
    an intent-aware model's batch carries each history's intent with it (no length to mismatch)."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    one = schemas["RecommendRequestNoIntent"]["properties"]["intent"]
    assert one.get("type") == "null"
    assert "intents" not in schemas["BatchRequest"]["properties"]
    r = client.post("/recommend", json={"history": [], "intent": "warm socks"})
    assert r.status_code == 422 and "does not take an intent" in r.text
    assert client.post("/recommend", json={"history": [], "intent": None}).status_code == 200

    run, _ = intent_run
    with TestClient(create_app(Recommender.load(run))) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        assert "intent" in schemas["RecommendRequest"]["properties"]
        assert "HistoryWithIntent" in json.dumps(schemas["IntentBatchRequest"]["properties"]["histories"])
        alone = c.post("/recommend", json={"history": [], "k": 3, "intent": "jazz"}).json()
        plain = c.post("/recommend", json={"history": [], "k": 3}).json()
        r = c.post("/recommend/batch", json={"histories": [{"history": [], "intent": "jazz"}, []], "k": 3})
        assert r.status_code == 200, r.text
        assert [x["items"] for x in r.json()["results"]] == [alone["items"], plain["items"]]


def test_items_health_metrics_docs(client, catalog):
    r = client.get(f"/items/{catalog[3]}")
    assert r.status_code == 200 and r.json()["item_id"] == catalog[3]
    assert client.get("/items/definitely-not-an-item").status_code == 404
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "sasrec" and h["n_items"] == len(catalog)
    client.post("/recommend", json={"history": [], "k": 2})
    client.post("/recommend", json={"history": [], "k": 0})
    text = client.get("/metrics").text
    assert _metric(text, "dreamrec_requests_total", method="POST", route="/recommend", status="200") >= 1
    assert _metric(text, "dreamrec_request_duration_seconds_bucket", route="/recommend", le="+Inf") >= 2
    assert _metric(text, "dreamrec_request_errors_total", route="/recommend", kind="client") >= 1
    assert "/items/{item_id}" in text  # route templates, not raw paths
    assert "/recommend/batch" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_popularity_served(runs):
    with TestClient(create_app(Recommender.load(runs["popularity"]))) as c:
        a = c.post("/recommend", json={"history": [], "k": 5}).json()
        b = c.post("/recommend", json={"history": a["items"][:2], "k": 5, "exclude_seen": True}).json()
    assert b["items"] == a["items"][2:] + b["items"][3:]


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in Prometheus text (labels in any order), or None."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            inner, value = line[len(name) + 1 :].rsplit("} ", 1)
            if dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', inner)) == labels:
                return float(value)
    return None


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_workers_fail_clearly_on_a_busy_port_and_set_tcp_nodelay() -> None:
    from dreamrec.errors import DreamrecError
    from dreamrec.serve.workers import _socket, run_workers

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DreamrecError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_workers("dreamrec.serve.app:app_from_env", host="127.0.0.1", port=port, workers=2)
    # asyncio sets TCP_NODELAY on accepted connections only for IPPROTO_TCP sockets; with proto 0 every
    # keep-alive response waited ~40 ms for the client's delayed ACK
    with _socket("127.0.0.1", 0) as s:
        assert s.proto == socket.IPPROTO_TCP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dreamrec_serve_subprocess(runs):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamrec.cli", "serve", str(runs["popularity"]), "--port", str(port),
         "--threads", "1", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.json()["model"] == "popularity"
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": [], "k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_help_and_bad_run_dir(tmp_path):
    from typer.testing import CliRunner

    from dreamrec.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--workers" in r.output and "--port" in r.output
    r = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert r.exit_code == 2 and "not a finished run" in r.output


def test_serve_supervisor_validates_in_a_child_and_keeps_no_model(runs, tmp_path, monkeypatch):
    """Issue 31: with several workers the supervisor used to load the run itself (345 MB unused)."""
    import uvicorn
    from typer.testing import CliRunner

    import dreamrec.serve.recommender
    import dreamrec.train.run
    from dreamrec.cli import app

    def no_model_here(*args, **kwargs):
        raise AssertionError("the supervisor loaded the run")

    started = {}
    monkeypatch.setattr(dreamrec.train.run, "load_run", no_model_here)
    monkeypatch.setattr(dreamrec.serve.recommender, "load_run", no_model_here)
    import dreamrec.serve.workers

    def record(*a, **kw):
        started.update(kw, metrics=os.environ["PROMETHEUS_MULTIPROC_DIR"])

    monkeypatch.setattr(uvicorn, "run", record)  # where SO_REUSEPORT is missing
    monkeypatch.setattr(dreamrec.serve.workers, "run_workers", record)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for var in ("DREAMREC_RUN_DIR", "DREAMREC_INDEX", "DREAMREC_SAMPLER", "DREAMREC_STEPS", "DREAMREC_SAMPLER_OPTIONS",
                "DREAMREC_MAX_BODY_BYTES", "DREAMREC_NEW_ITEM_OFFSET", "DREAMREC_THREADS"):
        monkeypatch.delenv(var, raising=False)
    r = CliRunner().invoke(app, ["serve", str(runs["popularity"]), "--workers", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert started["workers"] == 2
    assert not Path(started["metrics"]).exists()  # the shared metrics folder is removed after the run
    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--workers", "2"])  # checked in the child: fails fast
    assert r.exit_code == 2 and "not a finished run" in r.output


def test_metrics_add_up_over_two_worker_processes(runs):
    """Issue 31: with ``--workers 2`` a scrape showed only the counters of the worker answering it."""
    import threading

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamrec.cli", "serve", str(runs["popularity"]), "--port", str(port),
         "--workers", "2", "--threads", "1", "--log-level", "info"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while sum("Application startup complete" in line for line in log) < 2:  # both workers serve
            assert proc.poll() is None, "".join(log)
            assert time.time() < deadline, "workers did not start:\n" + "".join(log)
            time.sleep(0.2)
        # 16 connections opened together, then one GET /health on each: with one shared listening socket the
        # first worker to wake accepted every waiting connection; with a socket per worker the kernel spreads them
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        answered_by = set()
        for c in conns:
            with c:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answered_by.add(json.loads(_read_all(c).split(b"\r\n\r\n", 1)[1])["worker"])
        assert len(answered_by) == 2, answered_by
        n = 24
        for _ in range(n):  # a new connection each: the kernel spreads them over the workers
            assert httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": [], "k": 2}).status_code == 200
        for _ in range(6):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert _metric(text, "dreamrec_requests_total", method="POST", route="/recommend", status="200") == n
            assert _metric(text, "dreamrec_request_duration_seconds_count", route="/recommend") == n
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_metrics_folder_set_after_import_still_counts_this_process(monkeypatch, tmp_path):
    """A PROMETHEUS_MULTIPROC_DIR set too late for prometheus-client must not empty /metrics."""
    from dreamrec.serve.metrics import ServerMetrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    m = ServerMetrics()
    m.observe("GET", "/health", 200, 0.01)
    assert _metric(m.render(), "dreamrec_requests_total", method="GET", route="/health", status="200") == 1
