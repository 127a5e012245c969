"""Property: no request, however malformed, gets a 5xx or a stack trace from the router.

Thousands of generated requests (paths, content types, raw bytes, near-valid and wild
JSON with NaN, infinities, huge numbers, wrong types, misspelled and extra fields,
empty and oversized batches) against the router app in process; valid ones reach a real
echo backend over HTTP and must come back with one prediction per record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.router.app import create_app
from tests.support import Servers

pytestmark = pytest.mark.slow

COLUMNS = [
    {"name": "route_decision_score", "type": "double", "required": True},
    {"name": "hour_of_week", "type": "long", "required": True},
    {"name": "holiday", "type": "boolean", "required": True},
    {"name": "temperature", "type": "float", "required": False},
    {"name": "city", "type": "string", "required": False},
    {"name": "zone", "type": "integer", "required": False},
]
NAMES = [c["name"] for c in COLUMNS]
PATHS = ["/demand/1", "/demand/2", "/demand", "/demand/1/", "/nowhere", "/docs", "/demand/1/x"]
STATUSES = {200, 400, 404, 405, 413, 415, 422}


@pytest.fixture(scope="module")
def client(servers: Servers) -> Iterator[TestClient]:
    backend = servers.echo().start()
    config = {
        "limits": {"max_batch": 8, "max_body_bytes": 4096, "timeout_s": 5.0},
        "routes": [
            {
                "path": "/demand/1",
                "model": "d1",
                "version": 1,
                "backend": f"{backend.url}/d1",
                "inputs": COLUMNS,
            },
            {
                "path": "/demand/2",
                "model": "d2",
                "version": 3,
                "backend": f"{backend.url}/d2",
                "inputs": COLUMNS[:3],
            },
        ],
        "experiments": [
            {
                "path": "/demand",
                "sticky_header": "X-Caller-Id",
                "variants": [{"model": "d1", "weight": 30}, {"model": "d2", "weight": 70}],
            }
        ],
    }
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
near_valid_values = {
    "double": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70),
    "float": st.floats(allow_nan=True, allow_infinity=True, width=64),
    "long": st.integers(-(2**70), 2**70) | st.floats(allow_nan=False),
    "integer": st.integers(-(2**40), 2**40),
    "boolean": st.booleans() | st.integers(0, 1),
    "string": st.text(max_size=10) | st.integers(),
}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """Records near the schema: each column present or not, maybe mistyped, maybe renamed."""
    out: dict[str, Any] = {}
    for col in COLUMNS:
        if draw(st.integers(0, 9)) == 0:
            continue
        name = col["name"]
        if draw(st.integers(0, 19)) == 0:
            name = name[:-1] + draw(st.sampled_from("xyz_"))  # a misspelling
        if draw(st.integers(0, 9)) == 0:
            out[name] = draw(json_values)
        else:
            out[name] = draw(near_valid_values[col["type"]])
    if draw(st.integers(0, 14)) == 0:
        out[draw(st.text(max_size=8))] = draw(json_values)
    return out


bodies = st.one_of(
    records(),
    st.lists(records(), max_size=10),
    json_values,
)
raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"{",
            b"[",
            b"NaN",
            b"[{}]",
            b'{"a":1}{"b":2}',
            b"[" * 5000,
            b'{"hour_of_week": 1e400}',
            b"\xef\xbb\xbf{}",
            b" " * 5000,
        ]
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "json",
        "application/json;;;",
    ]
)


def _check(resp: Any, sent: Any) -> None:
    assert resp.status_code in STATUSES, (resp.status_code, resp.text[:500])
    body = (
        resp.json() if resp.headers.get("content-type", "").startswith("application/json") else None
    )
    if resp.status_code == 200 and isinstance(body, dict) and "predictions" in body:
        n = len(sent) if isinstance(sent, list) else 1
        assert len(body["predictions"]) == n
    elif resp.status_code != 200:
        assert isinstance(body, dict) and body["error"] and body["message"], resp.text[:500]
        assert "Traceback" not in resp.text


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(PATHS),
    body=bodies,
    ctype=content_types,
    key=st.none() | st.text(max_size=10),
)
def test_generated_json_bodies_never_give_5xx(
    client: TestClient, path: str, body: Any, ctype: str, key: str | None
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    if key is not None and key.isprintable() and key.isascii():
        headers["X-Caller-Id"] = key
    raw = json.dumps(body, allow_nan=True).encode()
    _check(client.post(path, content=raw, headers=headers), body)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(PATHS),
    raw=raw_bytes,
    ctype=content_types,
    method=st.sampled_from(["POST", "POST", "PUT", "GET", "DELETE"]),
)
def test_generated_raw_requests_never_give_5xx(
    client: TestClient, path: str, raw: bytes, ctype: str, method: str
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    resp = client.request(method, path, content=raw, headers=headers)
    if path == "/docs" and method == "GET":
        assert resp.status_code == 200
        return
    _check(resp, None)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(
        st.fixed_dictionaries(
            {
                "route_decision_score": st.floats(-1e300, 1e300),
                "hour_of_week": st.integers(0, 167),
                "holiday": st.booleans(),
            },
            optional={"city": st.text(max_size=5), "zone": st.integers(0, 9)},
        ),
        min_size=1,
        max_size=8,
    )
)
def test_valid_batches_answer_in_order(client: TestClient, batch: list[dict[str, Any]]) -> None:
    resp = client.post("/demand/1", json=batch)
    assert resp.status_code == 200, resp.text
    got = [p["record"] for p in resp.json()["predictions"]]
    assert [g["hour_of_week"] for g in got] == [b["hour_of_week"] for b in batch]
    # The experiment forwards only d2's columns when d2 is chosen.
    resp = client.post("/demand", json=batch, headers={"X-Caller-Id": "k"})
    assert resp.status_code == 200
    if resp.headers["X-Variant"] == "d2":
        assert all(set(p["record"]) <= set(NAMES[:3]) for p in resp.json()["predictions"])
