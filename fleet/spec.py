"""The schema of `models.yaml`: the one typed boundary for what the fleet is.

Two forms are accepted. The form used in the field today, a plain list of entries:

    - name: match_probability_2_TAXI_trafficunaware
      version: 1
      endpoint: probability
      parameters: [2, TAXI, trafficunaware]

and the full form, a mapping with `defaults`, `models` and `experiments`. Every error
names the model (or experiment), the field and the line of the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fleet.errors import ConfigError, SpecError
from fleet.naming import k8s_name
from fleet.router.config import RouterLimits

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def _cpu_quantity(value: str) -> str:
    if not _CPU.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes CPU quantity such as 250m or 1")
    return value


CpuQuantity = Annotated[str, AfterValidator(_cpu_quantity)]
"""A CPU request in Kubernetes units (`250m`, `1`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(_Strict):
    """BentoML adaptive batching of the model server."""

    enabled: bool = True
    """Group concurrent requests into one model call."""
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    """Most records in one model call."""
    max_latency_ms: Annotated[int, Field(ge=1, le=60_000)] = 20
    """Most time a request may wait for its batch to fill."""


class MemoryPolicy(_Strict):
    """How the pod's memory request and limit follow from the pre-deploy measurement."""

    request_margin_percent: Annotated[float, Field(ge=0, le=1000)] = 15.0
    """request = p95 of measured memory, plus this share of it."""
    limit_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    """limit = measured peak times this factor ..."""
    limit_floor_mib: Annotated[int, Field(ge=0)] = 64
    """... and at least the peak plus this many MiB."""
    ceiling_mib: Annotated[int, Field(ge=1)] = 4096
    """The deploy gate: a model measured above this fails the rollout."""
    fixed_mib: Annotated[int, Field(ge=16)] | None = None
    """Skip profiling; request and limit are both this many MiB."""


class Autoscaling(_Strict):
    """A HorizontalPodAutoscaler on CPU utilisation."""

    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Fewest pods."""
    max_replicas: Annotated[int, Field(ge=1)] = 5
    """Most pods."""
    cpu_utilization_percent: Annotated[int, Field(ge=1, le=100)] = 70
    """Target average CPU use, as a share of the CPU request."""

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class Settings(_Strict):
    """Per-model settings; `defaults` sets them fleet-wide, a model entry overrides them."""

    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Pods of the model server (ignored while autoscaling is set)."""
    cpu: CpuQuantity = "250m"
    """CPU request of one pod, in Kubernetes units (`250m`, `1`)."""
    batching: Batching = Batching()
    """Adaptive batching of the model server."""
    memory: MemoryPolicy = MemoryPolicy()
    """Memory sizing from the pre-deploy profile."""
    autoscaling: Autoscaling | None = None
    """Add a HorizontalPodAutoscaler."""


class Packing(_Strict):
    """Many small models per model server, placed by their measured memory
    (`fleet.packing`). Models with `dedicated: true` keep a pod of their own."""

    enabled: bool = False
    """Pack the fleet's models into shared servers ("packs")."""
    memory_budget_mib: Annotated[int, Field(ge=128, le=262_144)] = 2048
    """Most memory one pack may be given: its limit under `defaults.memory` stays within
    this; a model that would take a pack over it goes to another pack."""
    max_models: Annotated[int, Field(ge=1, le=1000)] = 100
    """Most models in one pack (what one pod's restart takes down at once)."""
    min_marginal_mib: Annotated[float, Field(ge=0, le=65_536)] = 2.0
    """Least memory a packed model is taken to add to its pack, whatever it measured: the
    profiler's twin run (the same model twice) shares what two copies of one model share
    (cloudpickle's by-value classes), and reads lower than different models do (a pack of
    ten different demo models: 1.8 MiB each, docs/benchmarks.md)."""
    replicas: Annotated[int, Field(ge=1, le=100)] = 2
    """Pods of each pack."""
    cpu: CpuQuantity = "500m"
    """CPU request of one pack pod, in Kubernetes units."""
    placement_file: str = "placement.yaml"
    """Where `fleet place` writes the placement and the measurements (relative to
    models.yaml); placing reads it so that models stay where they are."""


class Shadow(_Strict):
    """A copy of a route's traffic sent to another model of the fleet, whose answers are
    compared with the route's and never reach the caller."""

    model: Annotated[str, Field(min_length=1)]
    """Name of a model of this fleet (deployed like any other)."""
    percent: Annotated[float, Field(ge=0, le=100)]
    """Share of the route's valid requests copied to it, in percent."""


class ModelEntry(_Strict):
    """One model of the fleet: an MLflow registered model served on one route."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    """The model's name in the fleet, and its registered model's name in MLflow unless
    `registered_model` says otherwise."""
    registered_model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The registered model in MLflow, when it is not `name`: two entries can then serve
    two versions of one registered model (its `champion` and its `challenger`)."""
    version: Annotated[int, Field(ge=1)] | None = None
    """A pinned MLflow model version; give this or `alias`."""
    alias: Annotated[str, Field(min_length=1)] | None = None
    """An MLflow alias (`champion`) that picks the version; give this or `version`."""
    endpoint: Annotated[str, Field(min_length=1)]
    """First path segment of the route (`probability`)."""
    parameters: list[str | int] = []
    """Further path segments (`[2, TAXI, trafficaware]` → `/probability/2/TAXI/trafficaware`)."""
    replicas: int | None = None
    """Overrides `defaults.replicas`."""
    cpu: str | None = None
    """Overrides `defaults.cpu`."""
    batching: dict[str, Any] | None = None
    """Overrides fields of `defaults.batching`."""
    memory: dict[str, Any] | None = None
    """Overrides fields of `defaults.memory`."""
    autoscaling: dict[str, Any] | None = None
    """Overrides `defaults.autoscaling`."""
    shadow: Shadow | None = None
    """Copy a share of this route's requests to another model and compare the answers."""
    dedicated: bool = False
    """With `packing` on: keep a server and pod of its own (a big or hot model)."""

    @model_validator(mode="wrap")
    @classmethod
    def _version_or_alias(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> ModelEntry:
        # A wrap validator, not an "after" one: pydantic skips "after" validators once a
        # field fails, and a user should see this problem together with the others.
        problem = None
        if isinstance(data, dict):
            given = [k for k in ("version", "alias") if data.get(k) is not None]
            if not given:
                problem = "give either 'version' or 'alias' (neither is set)"
            elif len(given) == 2:
                problem = "give either 'version' or 'alias', not both"
        try:
            entry: ModelEntry = handler(data)
        except ValidationError as exc:
            if problem is None:
                raise
            errors = [_carry(e) for e in exc.errors()]
            errors.append(_carry({"type": "version_or_alias", "msg": problem, "loc": ()}, data))
            raise ValidationError.from_exception_data(exc.title, errors) from None
        if problem is not None:
            raise ValueError(problem)
        return entry

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _segment(value)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: list[str | int]) -> list[str | int]:
        for item in value:
            _segment(str(item))
        return value

    @property
    def route(self) -> str:
        return "/" + "/".join([self.endpoint, *(str(p) for p in self.parameters)])

    def overrides(self) -> dict[str, Any]:
        fields = ("replicas", "cpu", "batching", "memory", "autoscaling")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


class Variant(_Strict):
    """One arm of an A/B experiment."""

    model: str
    """Name of a model of this fleet."""
    weight: Annotated[int, Field(ge=0, le=100)]
    """Share of traffic in percent; the weights of an experiment sum to 100."""


class Experiment(_Strict):
    """An A/B test: one route whose traffic is split between models of the fleet."""

    route: str
    """The experiment's own path (`/probability/2/TAXI`)."""
    variants: Annotated[list[Variant], Field(min_length=2)]
    """The models that share the traffic, with their weights."""
    sticky_header: str = "X-Sticky-Key"
    """Request header whose value keeps one caller on one variant."""
    shadow: Shadow | None = None
    """Copy a share of this route's requests to another model and compare the answers."""

    @field_validator("route")
    @classmethod
    def _route(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not value.startswith("/") or not all(
            _SEGMENT.match(p) and p not in (".", "..") for p in parts
        ):
            raise ValueError(f"'{value}' is not a path such as /probability/2/TAXI")
        return "/" + "/".join(parts)

    @field_validator("sticky_header")
    @classmethod
    def _header(cls, value: str) -> str:
        # A name no client can send would silently make the experiment non-sticky.
        if not _HEADER.match(value):
            raise ValueError(f"'{value}' is not an HTTP header name such as X-Caller-Id")
        return value

    @model_validator(mode="after")
    def _weights(self) -> Experiment:
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"variants: the weights sum to {total}, not 100")
        names = [v.model for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variants: model '{twice[0]}' appears twice")
        return self


class Model(_Strict):
    """A model entry with its effective settings (defaults merged with overrides)."""

    name: str
    # Defaults, not only types: Pulumi's wire drops None-valued keys (components/wire.py).
    version: int | None = None
    alias: str | None = None
    route: str
    k8s_name: str
    settings: Settings
    registered_model: str | None = None
    packed: bool = False
    """Served from a pack (`packing.enabled` and not `dedicated`)."""

    @property
    def mlflow_name(self) -> str:
        """The registered model's name in MLflow."""
        return self.registered_model or self.name


class Fleet(_Strict):
    """The whole of `models.yaml`, validated."""

    defaults: Settings = Settings()
    """Settings every model gets unless its entry overrides them."""
    models: list[ModelEntry]
    """The models of the fleet."""
    experiments: list[Experiment] = []
    """A/B experiments over models of the fleet."""
    packing: Packing = Packing()
    """Pack small models into shared servers (off unless `packing.enabled`)."""
    router: RouterLimits = RouterLimits()
    """Limits the router enforces on every route (`fleet.router.config.RouterLimits`); a
    stack's `fleet:routerLimits` and `fleet routes` flags override single fields."""
    # Route path -> where its shadow is written (`models.yaml: line 12`), for the errors
    # found only after the registry answered; noted by `fleet.specfile.parse_fleet`.
    _shadow_lines: dict[str, str] = PrivateAttr(default_factory=dict)

    def note_shadow_line(self, route: str, where: str) -> None:
        self._shadow_lines[route] = where

    def shadow_line(self, route: str) -> str:
        """Where the shadow of `route` is written (`models.yaml: line 12`), or ''."""
        return self._shadow_lines.get(route, "")

    def resolved_models(self) -> list[Model]:
        """Models with effective settings; raises SpecError naming every bad override."""
        out: list[Model] = []
        problems: list[str] = []
        base = self.defaults.model_dump(exclude_none=True)
        for entry in self.models:
            try:
                settings = effective_settings(base, entry)
            except ValidationError as exc:
                problems += [f"model '{entry.name}': {describe_error(e)}" for e in exc.errors()]
                continue
            out.append(
                Model(
                    name=entry.name,
                    version=entry.version,
                    alias=entry.alias,
                    route=entry.route,
                    k8s_name=k8s_name(entry.name),
                    settings=settings,
                    registered_model=entry.registered_model,
                    packed=self.packing.enabled and not entry.dedicated,
                )
            )
        if problems:
            raise SpecError(problems)
        return out

    def with_packing(self, enabled: bool) -> Fleet:
        """The fleet with packing on or off (`fleet serve --dedicated` turns it off)."""
        packing = self.packing.model_copy(update={"enabled": enabled})
        return self.model_copy(update={"packing": packing})

    def with_alias(self, alias: str | None) -> Fleet:
        """The fleet with every alias-picked model on `alias` (a stack's override).

        Entries with a `registered_model` of their own keep their alias: they are a second
        deployment of another entry's registered model (its challenger), which the stack's
        alias would otherwise make the same version as the first.
        """
        if not alias:
            return self
        models = [
            m.model_copy(update={"alias": alias}) if m.alias and not m.registered_model else m
            for m in self.models
        ]
        return self.model_copy(update={"models": models})

    def with_router_limits(
        self, overrides: Mapping[str, Any], name_of: Callable[[str], str]
    ) -> Fleet:
        """The fleet with `overrides` over its router limits, validated as one.

        Raises ConfigError naming each bad field as `name_of(field)` says (a stack config
        key, a command-line flag).
        """
        if not overrides:
            return self
        try:
            limits = RouterLimits.model_validate({**self.router.model_dump(), **overrides})
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                field = ".".join(str(p) for p in e["loc"])
                msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
                problems.append(f"{name_of(field)}: {msg}")
            raise ConfigError(problems) from exc
        return self.model_copy(update={"router": limits})

    def only(self, names: list[str]) -> Fleet:
        """The fleet cut down to `names`, with the experiments whose variants all remain
        and the shadows whose model remains."""
        unknown = sorted(set(names) - {m.name for m in self.models})
        if unknown:
            raise SpecError([f"no model named '{n}' in the fleet" for n in unknown])
        keep = set(names)

        def unshadowed(item: _S) -> _S:
            if item.shadow is None or item.shadow.model in keep:
                return item
            return item.model_copy(update={"shadow": None})

        models = [unshadowed(m) for m in self.models if m.name in keep]
        exps = [unshadowed(e) for e in self.experiments if all(v.model in keep for v in e.variants)]
        return self.model_copy(update={"models": models, "experiments": exps})

    def shadows(self) -> dict[str, Shadow]:
        """The shadow of each route that has one: route path -> shadow."""
        owners: list[ModelEntry | Experiment] = [*self.models, *self.experiments]
        return {o.route: o.shadow for o in owners if o.shadow is not None}


_S = TypeVar("_S", ModelEntry, Experiment)


def _carry(error: Any, data: Any = None) -> InitErrorDetails:
    """An error of `exc.errors()` as input for a new ValidationError, message kept."""
    # The message goes in as context, so braces in user input are not read as a template.
    kind = PydanticCustomError(error["type"], "{msg}", {"msg": error["msg"]})
    return InitErrorDetails(type=kind, loc=tuple(error["loc"]), input=error.get("input", data))


def _segment(value: str) -> str:
    if not _SEGMENT.match(value):
        raise ValueError(f"'{value}' may hold only letters, digits, '.', '_' and '-'")
    if value in (".", ".."):
        raise ValueError(f"'{value}' is not a path segment (a route is served as written)")
    return value


def effective_settings(defaults: dict[str, Any], entry: ModelEntry) -> Settings:
    """`defaults` (plain data) with `entry`'s overrides merged in, field by field.

    The one merge of defaults and overrides; raises pydantic's ValidationError.
    """
    return Settings.model_validate(_merge(defaults, entry.overrides()))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_error(error: Any) -> str:
    """One pydantic error as `field.path: message`."""
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg
