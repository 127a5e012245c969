"""Request models and random records from a model's MLflow signature.

The signature is carried around as plain data (`Column` lists) so that the router, the
model server and the profiler share one definition without importing MLflow.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic import create_model as _create_model
from pydantic_core import PydanticKnownError

ColumnType = Literal["double", "float", "long", "integer", "boolean", "string"]
SUPPORTED_TYPES: tuple[str, ...] = ("double", "float", "long", "integer", "boolean", "string")

_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_FLOAT32_MAX = 3.4028234663852886e38
_DOUBLE_MAX = sys.float_info.max
INTEGER_FORMATS: dict[str, tuple[int, int]] = {"int64": _INT64, "int32": _INT32}
"""The OpenAPI format of each integer column type (long, integer) and its exact bounds."""


@dataclass(frozen=True)
class Column:
    """One input column of a model signature."""

    name: str
    type: ColumnType
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Column:
        return Column(name=data["name"], type=data["type"], required=data.get("required", True))


# (from, to): every value valid for the first type is valid for the second.
_WIDENS = {("integer", "long"), ("float", "double")}


def feed_problems(given: list[Column], wanted: list[Column]) -> list[str]:
    """Why records valid for the `given` columns are not all valid input for the `wanted`
    ones (a shadow model's): a required column missing or optional, or a type that does
    not take every value of the given one. Columns only `given` has are dropped."""
    have = {c.name: c for c in given}
    problems = []
    for want in wanted:
        got = have.get(want.name)
        if got is None:
            if want.required:
                problems.append(f"needs column '{want.name}', which the route's records lack")
            continue
        if want.required and not got.required:
            problems.append(f"needs column '{want.name}', optional in the route's records")
        if got.type != want.type and (got.type, want.type) not in _WIDENS:
            problems.append(f"column '{want.name}' is {want.type}, the route's is {got.type}")
    return problems


def _whole_number(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # JSON Schema counts 252.0 as an integer; the model server gets it as 252.
    if type(value) is float and value.is_integer():
        return handler(int(value))
    return handler(value)


def _exact_range(bound: float) -> WrapValidator:
    """Refuse a JSON integer past +-`bound` before it becomes a float: one just past it
    would round onto the bound and pass, where a JSON Schema checker compares it exactly
    with the bound as published (its shortest decimal form)."""
    exact = int(Decimal(repr(bound)))

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if type(value) is int and value > exact:
            raise PydanticKnownError("less_than_equal", {"le": bound})
        if type(value) is int and value < -exact:
            raise PydanticKnownError("greater_than_equal", {"ge": -bound})
        return handler(value)

    return WrapValidator(check)


def _integer(bounds: tuple[int, int], openapi_format: str) -> Any:
    extra: dict[str, Any] = {"format": openapi_format}
    limits = Field(ge=bounds[0], le=bounds[1], json_schema_extra=extra)
    return Annotated[StrictInt, limits, WrapValidator(_whole_number)]


def _number(bound: float) -> Any:
    limits = Field(allow_inf_nan=False, strict=True, ge=-bound, le=bound)
    return Annotated[float, limits, _exact_range(bound)]


def exact_integer_bounds(node: Any) -> Any:
    """`node` (a JSON schema, or a whole OpenAPI document) with the exact bounds of every
    int32 and int64 integer in it, in place.

    FastAPI's OpenAPI model types `minimum` and `maximum` as floats, which turns 2**63 - 1
    into 9.223372036854776e18: a checker that believes it lets through values the record
    model refuses. The `format` each integer column carries says which bounds it has.
    """
    if isinstance(node, dict):
        is_integer = node.get("type") == "integer"
        bounds = INTEGER_FORMATS.get(node.get("format", "")) if is_integer else None
        if bounds is not None:
            node["minimum"], node["maximum"] = bounds
        for value in node.values():
            exact_integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            exact_integer_bounds(value)
    return node


_TYPES: dict[str, Any] = {
    "double": _number(_DOUBLE_MAX),
    "float": _number(_FLOAT32_MAX),
    "long": _integer(_INT64, "int64"),
    "integer": _integer(_INT32, "int32"),
    "boolean": StrictBool,
    "string": StrictStr,
}
"""Per column type, what a record's field accepts: exactly what the published JSON
Schema (OpenAPI) allows, so that a schema-valid value is never refused nor an invalid
one taken. Unknown fields, wrong types, NaN and infinity are refused."""


def _python_type(col: Column) -> Any:
    typ = _TYPES.get(col.type)
    if typ is None:
        raise ValueError(f"column '{col.name}': type '{col.type}' is not supported")
    return typ


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)


def record_model(name: str, columns: list[Column]) -> type[BaseModel]:
    """A pydantic model for one record: unknown fields, wrong types, NaN and inf refused."""
    fields: dict[str, Any] = {}
    for i, col in enumerate(columns):
        typ = _python_type(col)
        if col.required:
            fields[f"f{i}"] = (typ, Field(alias=col.name))
        else:
            fields[f"f{i}"] = (typ | None, Field(default=None, alias=col.name))
    model: type[BaseModel] = _create_model(_model_name(name), __base__=_Record, **fields)
    return model


def batch_model(name: str, columns: list[Column], max_batch: int = 1000) -> type[RootModel[Any]]:
    """A pydantic model for a non-empty list of at most `max_batch` records."""
    record = record_model(name, columns)
    batch = Annotated[list[record], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]
    model: type[RootModel[Any]] = _create_model(
        _model_name(name) + "Batch", __base__=RootModel[batch]
    )
    return model


def _model_name(name: str) -> str:
    return "".join(p.capitalize() for p in "".join(c if c.isalnum() else " " for c in name).split())


def validate_records(model: type[BaseModel], records: list[Any]) -> list[dict[str, Any]]:
    """Validated records as plain dicts keyed by column name (raises ValidationError)."""
    return [model.model_validate(r).model_dump(by_alias=True) for r in records]


def random_record(columns: list[Column], rng: random.Random) -> dict[str, Any]:
    """One valid record; optional columns are sometimes left out."""
    out: dict[str, Any] = {}
    for col in columns:
        if not col.required and rng.random() < 0.2:
            continue
        out[col.name] = _random_value(col, rng)
    return out


def random_records(columns: list[Column], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` valid records, the same ones for the same seed."""
    rng = random.Random(seed)
    return [random_record(columns, rng) for _ in range(count)]


def _random_value(col: Column, rng: random.Random) -> Any:
    if col.type in ("double", "float"):
        value = rng.uniform(-100.0, 100.0)
        return value if math.isfinite(value) else 0.0
    if col.type in ("long", "integer"):
        return rng.randint(0, 1000)
    if col.type == "boolean":
        return rng.random() < 0.5
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))


def columns_from_signature(signature: Any, model_name: str) -> list[Column]:
    """Columns of an MLflow `ModelSignature`; raises ValueError naming the model otherwise."""
    if signature is None or signature.inputs is None:
        raise ValueError(f"model '{model_name}' has no signature")
    schema = signature.inputs
    if not schema.has_input_names() or schema.is_tensor_spec():
        raise ValueError(f"model '{model_name}': the signature is not column based")
    cols: list[Column] = []
    for spec in schema.inputs:
        typ = getattr(spec.type, "name", str(spec.type))
        if typ not in SUPPORTED_TYPES:
            raise ValueError(
                f"model '{model_name}': input '{spec.name}' has type '{typ}', "
                f"supported are {', '.join(SUPPORTED_TYPES)}"
            )
        cols.append(Column(name=spec.name, type=cast(ColumnType, typ), required=spec.required))
    return cols
