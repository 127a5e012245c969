"""Request validation against a model's signature: pure, and fast on the happy path.

A request body is one record (a JSON object) or a batch (a JSON array of them). Bodies
are parsed and validated in one step by pydantic-core from the raw bytes (no Python
JSON pass), with the record model of `fleet.schema`: unknown fields, wrong types, NaN
and infinity (which Python's `json` would accept) are refused. Problems become a
`RequestProblem` whose JSON body names each field.

Refusing costs about what accepting does: a body with far more keys than its records
can hold (many unknown fields) is diagnosed from its first problems without pydantic
building an error per field, a body with many errors is described from its first
records only, and the names a client sent are echoed at most `NAME_CHARS` long.
"""

from __future__ import annotations

import difflib
import email.message
import json
from collections.abc import Sequence
from typing import Annotated, Any, Union, cast

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic_core import from_json

from fleet.schema import Column, record_model

MAX_PROBLEMS = 20
"""Problems named in one answer; the rest are counted."""
NAME_CHARS = 64
"""Longest field name (as the client sent it) put into an answer."""


class RequestProblem(Exception):
    """A request the router refuses: a 4xx status and a JSON body naming the problem."""

    def __init__(self, status: int, error: str, problems: list[dict[str, str]]) -> None:
        self.status = status
        self.error = error
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        where = f"{first['field']}: " if first.get("field") else ""
        self.message = f"{where}{first['problem']}{more}"
        super().__init__(self.message)

    def payload(self, **context: Any) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **context, "problems": self.problems}

    def body(self, **context: Any) -> bytes:
        return json.dumps(self.payload(**context)).encode()


def _kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "batch"
    if isinstance(value, dict):
        return "record"
    return None


class RouteSchema:
    """What one route accepts: one record or a batch of 1..max_batch records."""

    def __init__(self, name: str, columns: Sequence[Column], max_batch: int) -> None:
        self.columns = list(columns)
        self.record = record_model(name, self.columns)
        batch = Annotated[list[self.record], Field(min_length=1, max_length=max_batch)]  # type: ignore[name-defined]
        # A callable discriminator keeps errors to the branch the body took (an object
        # or an array), instead of pydantic reporting both branches of the union.
        self.body_type: Any = Annotated[
            Union[Annotated[self.record, Tag("record")], Annotated[batch, Tag("batch")]],  # noqa: UP007
            Discriminator(
                _kind,
                custom_error_type="record_or_batch",
                custom_error_message="expected a JSON object (one record) or an array of records",
            ),
        ]
        self._body: TypeAdapter[Any] = TypeAdapter(cast(Any, self.body_type))
        self._list = TypeAdapter(list[self.record])  # type: ignore[name-defined]
        self._record: TypeAdapter[Any] = TypeAdapter(self.record)
        # pydantic field names are f0, f1, ... (the column names are aliases).
        self._field_of = {c.name: f"f{i}" for i, c in enumerate(self.columns)}

    def parse(self, raw: bytes) -> list[BaseModel]:
        """The validated records of a request body; raises RequestProblem."""
        if not raw.strip():
            raise RequestProblem(400, "invalid_json", [{"field": "(body)", "problem": "empty"}])
        # More `"key":` than the records' `{` can hold with known fields: unknown fields,
        # likely thousands of them. (Strings holding `":` only send a body here for
        # nothing: the check below is exact.)
        if raw.count(b'":') > max(1, raw.count(b"{")) * len(self.columns):
            self._refuse_unknown_fields(raw)
        # A batch whose first record is bad is described from its first records: one
        # failed pass of pydantic over a batch of bad records builds an error per field
        # (5,000 for 1,000 records of five), at several times the cost of a valid batch.
        if raw.lstrip()[:1] == b"[" and not self._valid_first_record(raw):
            first = self._first_errors(raw)
            if first:
                raise self._described(first, "the rest of the batch was not checked")
        try:
            value = self._body.validate_json(raw)
        except ValidationError as exc:
            raise self.problem(exc, raw) from None
        return value if isinstance(value, list) else [value]

    def _valid_first_record(self, raw: bytes) -> bool:
        """False when the batch's first record is certainly not valid (a cheap look at
        its text alone: True whenever that cannot tell)."""
        start, end = raw.find(b"{"), raw.find(b"}")
        if start < 0 or end < start:
            return True
        try:
            self._record.validate_json(raw[start : end + 1])
        except ValidationError as exc:
            # Not JSON on its own (a `}` in a string, a nested value): no verdict.
            return any(e["type"] == "json_invalid" for e in exc.errors(include_url=False))
        return True

    def _refuse_unknown_fields(self, raw: bytes) -> None:
        """Raise RequestProblem naming the first unknown fields of the body's records,
        counting the rest; return when it has none (or is not JSON).

        A large batch is read up to its first records first (`_head_of_batch`): when they
        show unknown fields, they name the problems and the rest is never parsed.
        """
        head = _head_of_batch(raw)
        if head is not None:
            try:
                first = from_json(head)
            except ValueError:
                pass  # cut inside a string: read the whole body
            else:
                self._refuse_unknown_in(first, cut=True)
        try:
            value = from_json(raw)
        except ValueError:
            return  # the validator names the JSON problem
        self._refuse_unknown_in(value, cut=False)

    def _refuse_unknown_in(self, value: Any, cut: bool) -> None:
        """Raise the RequestProblem of the unknown fields in `value` (the body, or the
        head of its batch when `cut`), if it has any."""
        batch = isinstance(value, list)
        known = self._field_of.keys()
        problems: list[dict[str, str]] = []
        unknown = 0
        for i, record in enumerate(value if batch else [value]):
            if isinstance(record, dict):
                extra = record.keys() - known
                unknown += len(extra)
                for name in sorted(extra)[: MAX_PROBLEMS - len(problems)]:
                    loc = ("batch", i, name) if batch else ("record", name)
                    problems.append(self._describe({"type": "extra_forbidden", "loc": loc}))
        if not problems:
            return
        if cut:
            problems.append({"field": "", "problem": "the rest of the batch was not checked"})
        elif unknown > len(problems):
            more = f"{unknown - len(problems)} more unknown fields"
            problems.append({"field": "", "problem": more})
        raise RequestProblem(422, "invalid_input", problems)

    def dump(self, records: list[BaseModel], only: Sequence[str] | None = None) -> bytes:
        """`records` as the JSON array the model server takes; `only` keeps those columns."""
        include = None
        if only is not None:
            include = {"__all__": {self._field_of[c] for c in only}}
        return self._list.dump_json(records, by_alias=True, exclude_unset=True, include=include)

    def problem(self, exc: ValidationError, raw: bytes = b"") -> RequestProblem:
        """The RequestProblem of a failed validation of `raw`."""
        if exc.error_count() > 4 * MAX_PROBLEMS and raw:
            first = self._first_errors(raw)
            if first:
                more = exc.error_count() - min(len(first), MAX_PROBLEMS)
                return self._described(first, f"{more} more")
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            msg = errors[0]["msg"].removeprefix("Invalid JSON: ")
            problem = f"not valid JSON: {msg}"
            return RequestProblem(400, "invalid_json", [{"field": "(body)", "problem": problem}])
        problems = [self._describe(e) for e in errors[:MAX_PROBLEMS]]
        if len(errors) > MAX_PROBLEMS:
            problems.append({"field": "", "problem": f"{len(errors) - MAX_PROBLEMS} more"})
        return RequestProblem(422, "invalid_input", problems)

    def _described(self, errors: list[Any], rest: str) -> RequestProblem:
        """The 422 naming the first MAX_PROBLEMS of `errors`, then `rest` (what of the
        body is not named)."""
        problems = [self._describe(e) for e in errors[:MAX_PROBLEMS]]
        return RequestProblem(422, "invalid_input", [*problems, {"field": "", "problem": rest}])

    def _first_errors(self, raw: bytes) -> list[Any]:
        """The errors of the body's first failing records, one record at a time, until
        there are MAX_PROBLEMS: what `exc.errors()` would list first, without building
        the rest (thousands of them cost the router far more than the valid body)."""
        try:
            value = from_json(raw)
        except ValueError:
            return []
        if not isinstance(value, list):
            return []
        found: list[Any] = []
        for i, record in enumerate(value):
            try:
                self._record.validate_python(record)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_input=False)
                found += [{**e, "loc": ("batch", i, *e["loc"])} for e in errors]
                if len(found) >= MAX_PROBLEMS:
                    break
        return found

    def _describe(self, error: Any) -> dict[str, str]:
        loc = [_short(p) if isinstance(p, str) else p for p in error["loc"]]
        kind = loc.pop(0) if loc else None
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        field = field or "(body)"
        name = str(loc[-1]) if loc and isinstance(loc[-1], str) else ""
        typ = error["type"]
        if typ == "missing":
            problem = "required field is missing"
        elif typ == "extra_forbidden":
            close = difflib.get_close_matches(name, list(self._field_of), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected {self._names()}"
            problem = f"unknown field; {hint}"
        elif typ == "finite_number":
            problem = "NaN and infinity are not allowed; send a finite number"
        elif typ in ("too_short", "too_long") and kind == "batch" and not loc:
            field, problem = "(batch)", error["msg"].replace("List", "the batch")
        elif typ in ("model_type", "model_attributes_type"):
            problem = "expected a JSON object (a record)"
        else:
            column = next((c for c in self.columns if c.name == name), None)
            expected = f"expected {column.type}: " if column else ""
            problem = f"{expected}{error['msg']}"
        return {"field": field, "problem": problem}

    def _names(self) -> str:
        return ", ".join(c.name for c in self.columns)


def _short(name: str) -> str:
    """A client's field name as echoed back: at most NAME_CHARS characters."""
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS] + "..."


def merged_columns(where: str, variants: Sequence[Sequence[Column]]) -> list[Column]:
    """The columns an experiment accepts: every variant's, required if any requires it.

    A column that two variants type differently cannot be validated for both; that is a
    config error naming the experiment and the column.
    """
    merged: dict[str, Column] = {}
    for columns in variants:
        for col in columns:
            seen = merged.get(col.name)
            if seen is not None and seen.type != col.type:
                raise ValueError(
                    f"{where}: column '{col.name}' is {seen.type} in one variant "
                    f"and {col.type} in another"
                )
            required = col.required or (seen is not None and seen.required)
            merged[col.name] = Column(col.name, col.type, required)
    return list(merged.values())


def check_content_type(value: str | None) -> None:
    """Accept application/json and application/*+json; raises RequestProblem (415)."""
    if value == "application/json":
        return
    if value:
        message = email.message.Message()
        message["content-type"] = value
        sub = message.get_content_subtype()
        if message.get_content_maintype() == "application" and (
            sub == "json" or sub.endswith("+json")
        ):
            return
    got = f"got '{value}'" if value else "none was sent"
    raise RequestProblem(
        415,
        "unsupported_media_type",
        [{"field": "Content-Type", "problem": f"send application/json ({got})"}],
    )


HEAD_BYTES = 65_536
"""How much of a large batch `_head_of_batch` keeps."""


def _head_of_batch(raw: bytes) -> bytes | None:
    """The first records of a JSON array larger than HEAD_BYTES, as an array of their own
    (cut after the last `},` within HEAD_BYTES), or None for a smaller body.

    What parses of it parses as in the whole body: it is the body's own first bytes. A
    cut that falls inside a string leaves it unterminated, and parsing fails.
    """
    if len(raw) <= HEAD_BYTES or not raw.lstrip().startswith(b"["):
        return None
    end = raw.rfind(b"},", 0, HEAD_BYTES)
    return raw[: end + 1] + b"]" if end > 0 else None
