"""schemathesis over openapi.yaml against the app served by uvicorn: for every operation,
schema-valid and schema-violating requests (derandomized) never get a 5xx, every answer's
status is documented and its body matches the documented schema, and invalid input is
refused with a 4xx.

Ids in paths and queries are pinned to the seeded account's things whenever the generated
value is itself valid, so the account routes run their real code rather than 404ing.
`STRIPESYNC_FUZZ_EXAMPLES=500` runs a fuller pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ROOT, ops_headers, platform_headers
from tests.fuzz.conftest import LiveServer
from tests.security.seed import Seeded

EXAMPLES = int(os.environ.get("STRIPESYNC_FUZZ_EXAMPLES", "25"))
SCHEMA = schemathesis.openapi.from_path(Path(ROOT) / "openapi.yaml")
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def auth_headers(path: str) -> dict[str, str]:
    if path.startswith("/v1/accounts"):
        return platform_headers
    if path.startswith(("/v1/jobs", "/v1/ops")):
        return ops_headers
    return {}


def _parameter_schemas(operation: Any) -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for param in operation.definition.raw.get("parameters", []):
        schemas[(param["in"], param["name"])] = param.get("schema", {})
    return schemas


def pin_ids(case: Any, seeded: Seeded) -> None:
    """Put the seeded ids where the generated value is valid (a value made invalid on
    purpose stays, so negative cases stay negative)."""
    schemas = _parameter_schemas(case.operation)
    pins = {
        ("path", "account_id"): seeded.account_id,
        ("path", "segment_id"): seeded.segment_id,
        ("path", "job_id"): seeded.job_id,
        ("path", "event_id"): seeded.event_id,
        ("query", "email"): seeded.email,
        ("query", "account_id"): seeded.account_id,
    }
    containers = {"path": case.path_parameters, "query": case.query}
    for (where, name), value in pins.items():
        params = containers[where]
        if params is None or name not in params:
            continue
        if jsonschema_rs.is_valid(schemas.get((where, name), {}), params[name]):
            params[name] = value


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_operation_answers_match_the_contract(
    operation: Any, live_server: LiveServer, seeded: Seeded
) -> None:
    session = requests.Session()
    headers = auth_headers(operation.path)

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            pin_ids(case, seeded)
            case.call_and_validate(
                base_url=live_server.url,
                session=session,
                headers=headers,
                checks=CHECKS,
                allow_redirects=False,
                timeout=30,
            )

        try:
            run()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no constrained parameter or
            # body): its positive pass above is what there is to run.
            assert mode is GenerationMode.NEGATIVE
