"""Request validation against a signature, and the router's answers to bad input.

The app-level checks here never reach a backend (bad input is refused before the
proxy), so the routes point at a closed port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fleet.errors import RoutesConfigError
from fleet.router.app import create_app
from fleet.router.endpoints import target
from fleet.router.validation import (
    MAX_PROBLEMS,
    NAME_CHARS,
    RequestProblem,
    RouteSchema,
    check_content_type,
    merged_columns,
)
from fleet.schema import Column

COLUMNS = [
    Column("route_decision_score", "double"),
    Column("hour", "long"),
    Column("holiday", "boolean"),
    Column("city", "string", required=False),
]
GOOD = {"route_decision_score": 0.5, "hour": 3, "holiday": False}
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _schema(max_batch: int = 3) -> RouteSchema:
    return RouteSchema("m", COLUMNS, max_batch)


def _problem(raw: bytes) -> RequestProblem:
    with pytest.raises(RequestProblem) as info:
        _schema().parse(raw)
    return info.value


def test_one_record_and_a_batch_parse_and_dump() -> None:
    schema = _schema()
    one = schema.parse(json.dumps(GOOD).encode())
    assert len(one) == 1
    batch = schema.parse(json.dumps([GOOD, {**GOOD, "city": "x", "hour": 4}]).encode())
    dumped = json.loads(schema.dump(batch))
    # Absent optional fields stay absent; an integer for a double becomes a double.
    assert dumped == [GOOD, {**GOOD, "city": "x", "hour": 4}]
    as_int = schema.parse(b'{"route_decision_score": 1, "hour": 3, "holiday": true}')
    assert json.loads(schema.dump(as_int)) == [
        {"route_decision_score": 1.0, "hour": 3, "holiday": True}
    ]
    assert isinstance(json.loads(schema.dump(as_int))[0]["route_decision_score"], float)
    assert json.loads(schema.dump(batch, only=["hour"])) == [{"hour": 3}, {"hour": 4}]


@pytest.mark.parametrize(
    ("raw", "status", "field", "words"),
    [
        (b'{"hour": 3, "holiday": false}', 422, "route_decision_score", "missing"),
        ({**GOOD, "extra": 1}, 422, "extra", "unknown field"),
        (
            {"route_decison_score": 0.5, "hour": 3, "holiday": False},
            422,
            "route_decison_score",
            "did you mean 'route_decision_score'",
        ),
        ({**GOOD, "hour": "3"}, 422, "hour", "expected long"),
        ({**GOOD, "hour": 3.5}, 422, "hour", "expected long"),
        ({**GOOD, "holiday": "yes"}, 422, "holiday", "expected boolean"),
        ({**GOOD, "city": 7}, 422, "city", "expected string"),
        ({**GOOD, "hour": 2**70}, 422, "hour", "expected long"),
        (
            b'{"route_decision_score": NaN, "hour": 3, "holiday": false}',
            422,
            "route_decision_score",
            "NaN and infinity",
        ),
        (
            b'{"route_decision_score": -Infinity, "hour": 3, "holiday": false}',
            422,
            "route_decision_score",
            "NaN and infinity",
        ),
        (
            b'{"route_decision_score": 1e999, "hour": 3, "holiday": false}',
            422,
            "route_decision_score",
            "NaN and infinity",
        ),
        ([GOOD, {**GOOD, "hour": None}], 422, "[1].hour", "expected long"),
        ([], 422, "(batch)", "at least 1"),
        ([GOOD] * 4, 422, "(batch)", "at most 3"),
        (b"42", 422, "(body)", "a JSON object (one record) or an array of records"),
        (b'"text"', 422, "(body)", "a JSON object"),
        ([1, 2], 422, "[0]", "expected a JSON object (a record)"),
        (b'{"route_decision_score": 0.5,', 400, "(body)", "not valid JSON: EOF"),
        (b"", 400, "(body)", "empty"),
        (b"\xff\xfe", 400, "(body)", "not valid JSON"),
    ],
)
def test_bad_input_names_problem_and_field(
    raw: object, status: int, field: str, words: str
) -> None:
    body = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    problem = _problem(body)
    assert problem.status == status
    named = [p for p in problem.problems if p["field"] == field]
    assert named, problem.problems
    assert words in named[0]["problem"]
    assert problem.message.startswith(f"{problem.problems[0]['field']}: ")
    payload = json.loads(problem.body(route="/r"))
    assert payload["route"] == "/r" and payload["error"] in ("invalid_input", "invalid_json")


def test_many_bad_records_are_reported_but_capped() -> None:
    schema = RouteSchema("m", COLUMNS, 1000)
    with pytest.raises(RequestProblem) as info:
        schema.parse(json.dumps([{"hour": "x"}] * 100).encode())
    assert len(info.value.problems) == 21
    assert info.value.problems[-1]["problem"] == "the rest of the batch was not checked"
    # A batch whose first record is good is checked whole: the rest are counted.
    with pytest.raises(RequestProblem) as info:
        schema.parse(json.dumps([GOOD] + [{"hour": "x"}] * 100).encode())
    assert len(info.value.problems) == 21
    assert info.value.problems[-1]["problem"] == f"{300 - MAX_PROBLEMS} more"


def test_many_unknown_fields_are_refused_from_the_first_ones() -> None:
    # 100 records with 50 unknown fields each: named up to MAX_PROBLEMS, the rest counted,
    # without pydantic building 5,000 errors.
    records = [{**GOOD, **{f"extra{k:02}": 1 for k in range(50)}} for _ in range(100)]
    schema = RouteSchema("m", COLUMNS, 1000)
    with pytest.raises(RequestProblem) as info:
        schema.parse(json.dumps(records).encode())
    problems = info.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == {"field": "[0].extra00", "problem": problems[0]["problem"]}
    assert problems[0]["problem"].startswith("unknown field; expected route_decision_score")
    # A body this large (over 64 KiB) is judged by its first records.
    assert problems[-1] == {"field": "", "problem": "the rest of the batch was not checked"}
    # A smaller one is read whole, and the rest counted.
    with pytest.raises(RequestProblem) as info:
        schema.parse(json.dumps(records[:20]).encode())
    assert info.value.problems[-1]["problem"] == f"{1000 - MAX_PROBLEMS} more unknown fields"


def test_a_string_that_looks_like_keys_is_still_a_valid_record() -> None:
    # Its `":` make the body look like one with unknown fields; the exact check says no.
    record = {**GOOD, "city": '"a": "b", "c": "d", "e": "f", "g": "h", "i": "j"'}
    assert len(_schema().parse(json.dumps(record).encode())) == 1


def test_a_cut_inside_a_string_reads_the_whole_batch() -> None:
    # The head of a large batch is cut after its last `},` within 64 KiB: here that `},`
    # is inside a string, so the head does not parse and the whole body is read.
    extra = {f"extra{k}": 1 for k in range(10)}
    records = [{**GOOD, "city": "}," * 40_000, **extra}] + [{**GOOD, **extra}] * 10
    raw = json.dumps(records).encode()
    with pytest.raises(RequestProblem) as info:
        RouteSchema("m", COLUMNS, 1000).parse(raw)
    assert info.value.problems[0]["field"] == "[0].extra0"
    assert info.value.problems[-1]["problem"] == f"{110 - MAX_PROBLEMS} more unknown fields"
    # And a valid batch with such a string is taken.
    good = [{**GOOD, "city": "}," * 40_000}] + [GOOD] * 10
    assert len(RouteSchema("m", COLUMNS, 1000).parse(json.dumps(good).encode())) == 11


def test_a_long_field_name_is_echoed_short() -> None:
    name = "x" * 1_000_000
    problem = _problem(json.dumps({**GOOD, name: 1}).encode())
    assert problem.problems == [
        {"field": "x" * NAME_CHARS + "...", "problem": problem.problems[0]["problem"]}
    ]
    assert len(problem.body()) < 1000


def test_many_wrong_records_are_described_from_the_first_ones() -> None:
    records = [{**GOOD, "hour": "three", "holiday": "no"} for _ in range(500)]
    with pytest.raises(RequestProblem) as info:
        RouteSchema("m", COLUMNS, 1000).parse(json.dumps(records).encode())
    problems = info.value.problems
    assert [p["field"] for p in problems[:4]] == [
        "[0].hour",
        "[0].holiday",
        "[1].hour",
        "[1].holiday",
    ]
    assert problems[-1] == {"field": "", "problem": "the rest of the batch was not checked"}


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
)
def test_json_content_types_are_accepted(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize("value", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(value: str | None) -> None:
    with pytest.raises(RequestProblem) as info:
        check_content_type(value)
    assert info.value.status == 415 and info.value.problems[0]["field"] == "Content-Type"


def test_merged_columns_of_an_experiment() -> None:
    a = [Column("x", "double"), Column("y", "long", required=False)]
    b = [Column("x", "double", required=False), Column("z", "string")]
    assert merged_columns("exp", [a, b]) == [
        Column("x", "double"),
        Column("y", "long", required=False),
        Column("z", "string"),
    ]
    with pytest.raises(ValueError, match="exp: column 'x' is double in one variant and long"):
        merged_columns("exp", [a, [Column("x", "long")]])


CONFIG = {
    "limits": {"max_batch": 3, "max_body_bytes": 512, "timeout_s": 1.0},
    "routes": [
        {
            "path": "/probability/1/TAXI/a",
            "model": "m_a",
            "version": 1,
            "backend": CLOSED,
            "inputs": [c.to_dict() for c in COLUMNS],
        },
        {
            "path": "/probability/1/TAXI/b",
            "model": "m_b",
            "version": 4,
            "backend": CLOSED,
            "inputs": [{"name": "x", "type": "double"}],
        },
    ],
    "experiments": [
        {
            "path": "/probability/1/TAXI",
            "sticky_header": "X-Caller-Id",
            "variants": [{"model": "m_a", "weight": 50}, {"model": "m_b", "weight": 50}],
        }
    ],
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(CONFIG), raise_server_exceptions=False) as test_client:
        yield test_client


def test_openapi_lists_every_route_with_its_own_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, props in [
        ("/probability/1/TAXI/a", {"route_decision_score", "hour", "holiday", "city"}),
        ("/probability/1/TAXI/b", {"x"}),
        ("/probability/1/TAXI", {"route_decision_score", "hour", "holiday", "city", "x"}),
    ]:
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        one, batch = body["oneOf"]
        record = schemas[one["$ref"].rsplit("/", 1)[1]]
        assert set(record["properties"]) == props
        assert record["additionalProperties"] is False
        assert batch["type"] == "array" and batch["maxItems"] == 3 and batch["minItems"] == 1
    assert "m_a v1" in doc["paths"]["/probability/1/TAXI/a"]["post"]["summary"]
    assert "X-Caller-Id" in doc["paths"]["/probability/1/TAXI"]["post"]["summary"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "error"),
    [
        (
            "/probability/1/TAXI/a",
            b'{"hour": 1}',
            {"content-type": "application/json"},
            422,
            "invalid_input",
        ),
        (
            "/probability/1/TAXI/a",
            json.dumps(GOOD).encode(),
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        ("/probability/1/TAXI/a", json.dumps(GOOD).encode(), {}, 415, "unsupported_media_type"),
        (
            "/probability/1/TAXI/a",
            b"[" + b" " * 600 + b"]",
            {"content-type": "application/json"},
            413,
            "body_too_large",
        ),
        (
            "/probability/1/TAXI/a",
            b"{nope",
            {"content-type": "application/json"},
            400,
            "invalid_json",
        ),
        (
            "/probability/1/TAXI",
            b'{"x": NaN}',
            {"content-type": "application/json"},
            422,
            "invalid_input",
        ),
        ("/probability/9", b"{}", {"content-type": "application/json"}, 404, "not_found"),
    ],
)
def test_app_answers_bad_requests_with_a_named_problem(
    client: TestClient,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    resp = client.post(path, content=content, headers=headers)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error
    assert body["message"] and body["problems"][0]["field"]


def test_an_encoded_slash_is_refused_not_decoded_into_a_route(client: TestClient) -> None:
    resp = client.post(
        "/probability%2F1/TAXI/a", content=b"{}", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"] == "bad_path"
    assert client.get("/docs%2f").status_code == 400


def test_a_trailing_slash_is_not_redirected_to_the_host_header(client: TestClient) -> None:
    resp = client.post(
        "/probability/1/TAXI/a/",
        content=b"{}",
        headers={"content-type": "application/json", "host": "evil.example"},
        follow_redirects=False,
    )
    assert resp.status_code == 404 and "location" not in resp.headers


def test_a_model_name_is_escaped_in_the_answer() -> None:
    name = 'm"\\x'
    answer = target(name, 3, CLOSED, 1.0).prefix + b"[0.5]}"
    assert json.loads(answer) == {"model": name, "version": 3, "predictions": [0.5]}


def test_body_over_limit_without_content_length_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 64

    resp = client.post(
        "/probability/1/TAXI/a", content=chunks(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["error"] == "body_too_large"


def test_get_on_a_model_route_is_405(client: TestClient) -> None:
    resp = client.get("/probability/1/TAXI/a")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


def test_valid_input_reaches_the_backend(client: TestClient) -> None:
    # Nothing listens on the backend's port: valid input passes validation and gets 503.
    resp = client.post("/probability/1/TAXI/b", json={"x": 1.0})
    assert resp.status_code == 503
    assert resp.json()["model"] == "m_b" and CLOSED not in resp.text  # the address is logged


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/nowhere", json={})
    text = client.get("/metrics").text
    assert 'fleet_router_requests_total{route="(unmatched)",status="404",variant=""}' in text


def test_bad_config_is_refused_naming_the_field() -> None:
    bad = json.loads(json.dumps(CONFIG))
    bad["routes"][1]["inputs"][0]["type"] = "long"
    bad["routes"][1]["inputs"][0]["name"] = "hour"
    bad["routes"][1]["inputs"].append({"name": "holiday", "type": "string"})
    with pytest.raises(ValueError, match="column 'holiday' is boolean in one variant and string"):
        create_app(bad)
    bad = json.loads(json.dumps(CONFIG))
    del bad["routes"][0]["backend"]
    with pytest.raises(RoutesConfigError, match=r"routes\.0\.backend"):
        create_app(bad)
