"""fleet.schema: request models and random records from a model's signature."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import Array
from pydantic import BaseModel, ValidationError

from fleet.schema import (
    SUPPORTED_TYPES,
    Column,
    batch_model,
    columns_from_signature,
    exact_integer_bounds,
    random_records,
    record_model,
    validate_records,
)

COLUMNS = [
    Column("temperature", "double"),
    Column("ratio", "float"),
    Column("hour_of_week", "long"),
    Column("count", "integer"),
    Column("holiday", "boolean"),
    Column("city", "string"),
    Column("note", "string", required=False),
]
GOOD: dict[str, Any] = {
    "temperature": 12.5,
    "ratio": 0.25,
    "hour_of_week": 100,
    "count": 3,
    "holiday": False,
    "city": "TAXI",
}
Record = record_model("demand_forecast_2", COLUMNS)


def errors(model: type[BaseModel], value: Any) -> list[tuple[tuple[Any, ...], str]]:
    """(location, message) of every error; the value must be refused."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(value)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_a_record_of_every_type_is_accepted_as_dict_and_as_json() -> None:
    expected = {**GOOD, "note": None}
    assert Record.model_validate(GOOD).model_dump(by_alias=True) == expected
    assert Record.model_validate_json(json.dumps(GOOD)).model_dump(by_alias=True) == expected
    assert validate_records(Record, [GOOD, {**GOOD, "note": "x"}])[1]["note"] == "x"


def test_an_integer_is_a_valid_double() -> None:
    record = Record.model_validate({**GOOD, "temperature": 12})
    assert record.model_dump(by_alias=True)["temperature"] == 12.0


def test_optional_column_may_be_missing_or_null_but_not_wrong() -> None:
    assert Record.model_validate({**GOOD, "note": None}).model_dump(by_alias=True)["note"] is None
    assert errors(Record, {**GOOD, "note": 5}) == [(("note",), "Input should be a valid string")]


@pytest.mark.parametrize("column", ["temperature", "ratio"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(column: str, value: float) -> None:
    assert errors(Record, {**GOOD, column: value}) == [
        ((column,), "Input should be a finite number")
    ]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_from_json_is_refused(literal: str) -> None:
    # json.loads reads these non-standard literals as floats; a client may well send them.
    text = json.dumps(GOOD).replace("12.5", literal)
    assert errors(Record, json.loads(text)) == [
        (("temperature",), "Input should be a finite number")
    ]
    with pytest.raises(ValidationError, match="temperature"):
        Record.model_validate_json(text)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("temperature", "12.5"),  # a string for a double
        ("temperature", True),  # a bool for a double
        ("ratio", 1e39),  # beyond float32
        ("hour_of_week", True),  # a bool for a long
        ("hour_of_week", 3.5),  # a fraction for a long
        ("hour_of_week", 2.0**63),  # a whole float beyond int64
        ("hour_of_week", "3"),  # a string for a long
        ("hour_of_week", 2**63),  # beyond int64
        ("count", 2**31),  # beyond int32
        ("holiday", 1),  # an int for a boolean
        ("holiday", "true"),  # a string for a boolean
        ("city", 7),  # a number for a string
        ("city", None),  # null for a required column
    ],
)
def test_wrong_types_are_refused_naming_the_column(column: str, value: Any) -> None:
    ((loc, _msg),) = errors(Record, {**GOOD, column: value})
    assert loc == (column,)


def test_bounds_are_exactly_the_published_ones() -> None:
    """What JSON Schema allows, the record model takes, and nothing more: the OpenAPI
    contract (tests/integration/test_router_contract.py checks it from outside)."""
    taken = Record.model_validate_json(json.dumps({**GOOD, "hour_of_week": 2**63 - 1}))
    assert taken.model_dump(by_alias=True)["hour_of_week"] == 2**63 - 1
    assert errors(Record, {**GOOD, "hour_of_week": -(2**63) - 1})
    # JSON Schema counts 3.0 as an integer: taken, and forwarded as 3.
    whole = Record.model_validate_json(json.dumps({**GOOD, "hour_of_week": 3.0, "count": -2.0}))
    assert whole.model_dump(by_alias=True) | {"note": None} == {
        **GOOD,
        "hour_of_week": 3,
        "count": -2,
        "note": None,
    }
    # An integer just past the largest double would round onto it: refused, as the
    # published maximum (1.7976931348623157e+308, read as a decimal) says.
    published = 17976931348623157 * 10**292
    assert Record.model_validate({**GOOD, "temperature": published})
    ((loc, msg),) = errors(Record, {**GOOD, "temperature": published + 1})
    assert loc == ("temperature",) and "less than or equal to" in msg
    assert errors(Record, {**GOOD, "ratio": -(34028234663852886 * 10**22) - 1})


def test_integer_bounds_are_published_exactly() -> None:
    schema = exact_integer_bounds(json.loads(json.dumps(Record.model_json_schema())))
    props = schema["properties"]
    assert props["hour_of_week"]["format"] == "int64"
    assert (props["hour_of_week"]["minimum"], props["hour_of_week"]["maximum"]) == (
        -(2**63),
        2**63 - 1,
    )
    assert (props["count"]["minimum"], props["count"]["maximum"]) == (-(2**31), 2**31 - 1)
    # FastAPI's OpenAPI model turns them into floats; they are put back.
    floated = {"type": "integer", "format": "int64", "minimum": -9.2e18, "maximum": 9.2e18}
    assert exact_integer_bounds({"anyOf": [floated]})["anyOf"][0]["maximum"] == 2**63 - 1


def test_extra_and_missing_fields_are_refused_by_name() -> None:
    record = {k: v for k, v in GOOD.items() if k != "holiday"} | {"holidays": True}
    assert sorted(errors(Record, record)) == [
        (("holiday",), "Field required"),
        (("holidays",), "Extra inputs are not permitted"),
    ]


def test_column_names_that_are_not_identifiers_work() -> None:
    model = record_model("m", [Column("hour of week", "long"), Column("class", "double")])
    value = {"hour of week": 1, "class": 2.0}
    assert model.model_validate(value).model_dump(by_alias=True) == value


def test_batch_model_takes_one_to_max_records() -> None:
    batch = batch_model("demand_forecast_2", COLUMNS, max_batch=3)
    assert len(batch.model_validate([GOOD, GOOD, GOOD]).root) == 3
    assert errors(batch, []) == [((), "List should have at least 1 item after validation, not 0")]
    ((loc, msg),) = errors(batch, [GOOD] * 4)
    assert loc == () and "at most 3 items" in msg
    assert errors(batch, [GOOD, {**GOOD, "temperature": math.nan}]) == [
        ((1, "temperature"), "Input should be a finite number")
    ]
    assert errors(batch, GOOD) == [((), "Input should be a valid list")]


def test_random_records_are_valid_and_repeat_for_a_seed() -> None:
    records = random_records(COLUMNS, 200, seed=7)
    assert len(records) == 200
    validate_records(Record, records)
    assert random_records(COLUMNS, 200, seed=7) == records
    assert random_records(COLUMNS, 200, seed=8) != records
    assert any("note" in r for r in records) and any("note" not in r for r in records)
    assert all(set(r) >= {c.name for c in COLUMNS if c.required} for r in records)


column_lists = st.lists(
    st.builds(
        Column,
        name=st.text(min_size=1, max_size=20),
        type=st.sampled_from(SUPPORTED_TYPES),
        required=st.booleans(),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda c: c.name,
)


@settings(deadline=None, max_examples=40)  # no timing: CI machines are shared
@given(column_lists, st.integers(min_value=0, max_value=2**32))
def test_random_records_validate_for_any_signature(columns: list[Column], seed: int) -> None:
    model = batch_model("any", columns, max_batch=20)
    records = random_records(columns, 20, seed=seed)
    model.model_validate(records)
    model.model_validate_json(json.dumps(records))


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")
def test_columns_from_an_inferred_mlflow_signature() -> None:
    frame = pd.DataFrame(
        {
            "temperature": np.array([1.0]),
            "ratio": np.array([1.0], dtype="float32"),
            "hour_of_week": np.array([1], dtype="int64"),
            "count": np.array([1], dtype="int32"),
            "holiday": [True],
            "city": ["TAXI"],
        }
    )
    signature = infer_signature(frame, np.array([0.5]))
    assert columns_from_signature(signature, "m") == [c for c in COLUMNS if c.required]


def test_optional_columns_from_a_signature() -> None:
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "a"), ColSpec("string", "b", required=False)])
    )
    assert columns_from_signature(signature, "m") == [
        Column("a", "double"),
        Column("b", "string", required=False),
    ]


@pytest.mark.parametrize(
    ("signature", "needle"),
    [
        (None, "model 'match_1' has no signature"),
        (
            ModelSignature(inputs=None, outputs=Schema([ColSpec("double")])),
            "model 'match_1' has no signature",
        ),
        (
            ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, 5))])),
            "model 'match_1': the signature is not column based",
        ),
        (
            ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, 5), "x")])),
            "model 'match_1': the signature is not column based",
        ),
        (
            ModelSignature(inputs=Schema([ColSpec("double")])),
            "model 'match_1': the signature is not column based",
        ),
        (
            ModelSignature(inputs=Schema([ColSpec("datetime", "when")])),
            "model 'match_1': input 'when' has type 'datetime'",
        ),
        (
            ModelSignature(inputs=Schema([ColSpec(Array("double"), "xs")])),
            "model 'match_1': input 'xs' has type 'Array(double)'",
        ),
    ],
)
def test_unusable_signatures_name_the_model(signature: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        columns_from_signature(signature, "match_1")
    assert needle in str(info.value)


def test_columns_round_trip_as_plain_data() -> None:
    for column in COLUMNS:
        assert Column.from_dict(json.loads(json.dumps(column.to_dict()))) == column
    assert Column.from_dict({"name": "a", "type": "long"}).required is True
