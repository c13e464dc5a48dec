"""Property-based fuzzing of the HTTP API from its own OpenAPI schema: no input yields a 5xx.

Every operation of ``/openapi.json`` gets ``MAX_EXAMPLES`` valid and ``MAX_EXAMPLES`` invalid
(negative) requests from schemathesis' Hypothesis strategies, derandomised (no flakiness, no
example database). Besides "no server error", responses must match their declared status codes
and schemas.
"""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from dreamrec.config import RunConfig, TrainConfig
from dreamrec.serve import Recommender
from dreamrec.serve.app import create_app
from dreamrec.train.run import train_run

MAX_EXAMPLES = 30
OPERATIONS = ["POST /recommend", "POST /recommend/batch", "GET /items/{item_id}", "GET /health", "GET /metrics"]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, small_synthetic):
    tmp = tmp_path_factory.mktemp("fuzz")
    ds = small_synthetic.dataset
    cfg = RunConfig(model="sasrec", params={"hidden": 16, "n_layers": 1}, train=TrainConfig(epochs=1, seed=1))
    train_run(cfg, ds.save(tmp / "data"), tmp / "run", progress=False, log=None, dataset=ds)
    app = create_app(Recommender.load(tmp / "run"), max_body_bytes=50_000)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_lists_every_operation(api_schema):
    labels = {r.ok().label for r in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= labels


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_error(api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    if mode is GenerationMode.NEGATIVE and label.startswith("GET"):
        pytest.skip("no parameter that can be made invalid (the item id is any string)")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        case.call_and_validate(checks=checks)

    run()
