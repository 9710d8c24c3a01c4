"""schemathesis drives every operation of the OpenAPI document against a
real server with generated requests (bounded), and none may get a 5xx.

Its pytest plugin does not run under pytest 9, so the operations are taken
from the schema and each is driven by a hypothesis test of its own."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("schemathesis"), workers=2) as server:
        yield server, schemathesis.openapi.from_url(f"{server.url}/v2/openapi.json")


def test_no_generated_request_gets_a_5xx(served_schema):
    server, schema = served_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    document = server.get("/v2/openapi.json").json()
    described = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops
                 if m in ("get", "post")}
    # schemathesis leaves out the route that serves the schema itself
    assert {(op.method.upper(), op.path) for op in operations} == \
        described - {("GET", "/v2/openapi.json")}
    failures: list[str] = []
    for operation in operations:

        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(),
               name=st.sampled_from(["mnist-svm", "mushroom-xgboost", "nope"]),
               version=st.sampled_from(["v0.1.0", "9"]))
        def drive(case, name, version):
            # mostly real models, so generated bodies reach the decoder and the runtimes
            for key, value in (("name", name), ("version", version)):
                if case.path_parameters and key in case.path_parameters:
                    case.path_parameters[key] = value
            response = case.call(base_url=server.url, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")
            elif response.status_code >= 400:
                assert "error" in response.json(), response.text

        drive()
    assert not failures, failures[:5]
    assert server.get("/v2/health/ready").status_code == 200
