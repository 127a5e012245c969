"""Reading `models.yaml` (`load_fleet`, `parse_fleet`): the YAML side of fleet.spec.

Pydantic validates one entry at a time and stops at the first failing layer; a user
fixing a fleet of 150 models wants every problem at once, each with its line. So this
module keeps the YAML node tree for line numbers, runs the checks across entries
(duplicate names and routes, experiments) over every entry that is valid on its own,
checks each model's overrides merged with the defaults, and sorts all of it by line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fleet.errors import SpecError
from fleet.naming import k8s_name
from fleet.router.config import own_path
from fleet.spec import (
    Experiment,
    Fleet,
    ModelEntry,
    Shadow,
    Variant,
    describe_error,
    effective_settings,
)

_T = TypeVar("_T", bound=BaseModel)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate `models.yaml`; raises SpecError naming model, field and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_fleet(text, str(path))


def parse_fleet(text: str, source: str = "models.yaml") -> Fleet:
    """Validate the text of `models.yaml`; raises SpecError with every problem, by line."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{source}: {where}not valid YAML: {what}"]) from exc
    if isinstance(data, list):
        data = {"models": data}
        node = yaml.MappingNode("tag:yaml.org,2002:map", [(yaml.ScalarNode("", "models"), node)])
    if not isinstance(data, dict):
        raise SpecError([f"{source}: expected a list of models or a mapping with 'models'"])
    _as_written(data, node)
    problems: list[tuple[int, str]] = []
    fleet = None
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        problems += [_locate(node, data, e) for e in exc.errors()]
    # These run over every entry that is valid on its own, even when others are not, so
    # that one run shows every problem.
    problems += _cross_check(data, node)
    problems += _override_problems(data, node)
    problems += _packing_problems(data, node)
    if problems or fleet is None:
        problems.sort(key=lambda p: p[0])
        raise SpecError([f"{source}: line {line}: {what}" for line, what in problems])
    # Where each shadow is written: a shadow that cannot take its route's records is
    # found only once the registry has given the signatures (fleet.routes).
    owners = [("models", i, m.route, m.shadow) for i, m in enumerate(fleet.models)]
    owners += [("experiments", i, e.route, e.shadow) for i, e in enumerate(fleet.experiments)]
    for key, i, route, shadow in owners:
        if shadow is not None:
            fleet.note_shadow_line(
                route, f"{source}: line {_line(node, (key, i, 'shadow', 'model'))}"
            )
    return fleet


def _as_written(data: dict[str, Any], node: Any) -> None:
    """Put back the text of names and path segments that YAML 1.1 read as something else.

    YAML 1.1 reads `NO` (Norway) and `on` as booleans, `010` as 8 and `0x1f` as 31; a
    route must be served exactly as written.
    """
    for i, entry in enumerate(_items(data, "models")):
        for key in ("name", "endpoint"):
            _restore(entry, key, _node(node, ("models", i, key)), always=True)
        params = entry.get("parameters") if isinstance(entry, dict) else None
        for k in range(len(params) if isinstance(params, list) else 0):
            _restore(params, k, _node(node, ("models", i, "parameters", k)), always=False)
    for j, exp in enumerate(_items(data, "experiments")):
        variants = exp.get("variants") if isinstance(exp, dict) else None
        for k, variant in enumerate(variants if isinstance(variants, list) else []):
            at = ("experiments", j, "variants", k, "model")
            _restore(variant, "model", _node(node, at), always=True)


def _restore(container: Any, key: Any, scalar: Any, always: bool) -> None:
    """Replace a parsed bool/number by its text (unless `always` is off and it is a plain int)."""
    if not isinstance(scalar, yaml.ScalarNode) or scalar.style:  # quoted: already text
        return
    value = container[key]
    plain_int = type(value) is int and str(value) == scalar.value
    if isinstance(value, bool | int | float) and (always or not plain_int):
        container[key] = scalar.value


def _items(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def _valid(data: dict[str, Any], key: str, cls: type[_T]) -> list[tuple[int, _T]]:
    """(index, entry) for the entries under `key` that are valid on their own."""
    out: list[tuple[int, _T]] = []
    for i, raw in enumerate(_items(data, key)):
        try:
            out.append((i, cls.model_validate(raw)))
        except ValidationError:
            continue
    return out


def _cross_check(data: dict[str, Any], node: Any) -> list[tuple[int, str]]:
    problems: list[tuple[int, str]] = []
    names: dict[str, int] = {}
    routes: dict[str, str] = {}
    k8s: dict[str, str] = {}
    for i, m in _valid(data, "models", ModelEntry):
        where = _line(node, ("models", i))
        if m.name in names:
            first = _line(node, ("models", names[m.name]))
            problems.append(
                (where, f"model '{m.name}': name: duplicate of the model on line {first}")
            )
            continue
        names[m.name] = i
        if m.route in routes:
            problems.append(
                (
                    where,
                    f"model '{m.name}': endpoint/parameters: route {m.route} is already "
                    f"served by model '{routes[m.route]}'",
                )
            )
        routes.setdefault(m.route, m.name)
        if own := own_path(m.route):
            problems.append(
                (
                    where,
                    f"model '{m.name}': endpoint/parameters: route {m.route} is the "
                    f"router's own path ({own})",
                )
            )
        kn = k8s_name(m.name)
        if kn in k8s:
            problems.append(
                (where, f"model '{m.name}': name: Kubernetes name {kn} collides with '{k8s[kn]}'")
            )
        k8s.setdefault(kn, m.name)
    # A variant naming a model whose entry is invalid is not also reported as missing.
    entries = [e for e in _items(data, "models") if isinstance(e, dict)]
    listed = {e["name"] for e in entries if isinstance(e.get("name"), str)}
    valid_exps = dict(_valid(data, "experiments", Experiment))
    seen: set[str] = set()
    for j, raw in enumerate(_items(data, "experiments")):
        where, who = _line(node, ("experiments", j)), _who(data, ("experiments", j))
        exp = valid_exps.get(j)
        if exp is not None and exp.route in routes:
            problems.append(
                (where, f"{who}: route: collides with the route of model '{routes[exp.route]}'")
            )
        if exp is not None and own_path(exp.route):
            problems.append((where, f"{who}: route: {exp.route} is the router's own path"))
        if exp is not None and exp.route in seen:
            problems.append((where, f"{who}: route: duplicate of another experiment's route"))
        seen.update([exp.route] if exp is not None else [])
        variants = raw.get("variants") if isinstance(raw, dict) else None
        for k, v in _valid({"v": variants}, "v", Variant):
            if v.model not in listed:
                vline = _line(node, ("experiments", j, "variants", k))
                problems.append(
                    (vline, f"{who}: variants.{k}.model: no model named '{v.model}' in the fleet")
                )
    problems += _shadow_problems(data, node, listed)
    return problems


def _shadow_problems(data: dict[str, Any], node: Any, listed: set[str]) -> list[tuple[int, str]]:
    """Shadows naming no model of the fleet, the route's own model, or a variant."""
    problems: list[tuple[int, str]] = []
    for key in ("models", "experiments"):
        for i, raw in enumerate(_items(data, key)):
            shadow = raw.get("shadow") if isinstance(raw, dict) else None
            valid = _valid({"s": [shadow]}, "s", Shadow)
            if not valid:
                continue  # reported by the schema
            name = valid[0][1].model
            own = {raw.get("name")} if key == "models" else _variant_models(raw)
            problem = None
            if name not in listed:
                problem = f"no model named '{name}' in the fleet"
            elif name in own:
                problem = (
                    f"'{name}' is the route's own model"
                    if key == "models"
                    else f"'{name}' is a variant of this experiment: it already answers callers"
                )
            if problem:
                at = _line(node, (key, i, "shadow", "model"))
                problems.append((at, f"{_who(data, (key, i))}: shadow.model: {problem}"))
    return problems


def _variant_models(raw: dict[str, Any]) -> set[Any]:
    variants = raw.get("variants")
    items = variants if isinstance(variants, list) else []
    return {v.get("model") for v in items if isinstance(v, dict)}


def _override_problems(data: dict[str, Any], node: Any) -> list[tuple[int, str]]:
    """Bad per-model overrides (`batching: {max_batch_size: 0}`), merged with the defaults."""
    defaults = data.get("defaults")
    base = defaults if isinstance(defaults, dict) else {}
    problems: list[tuple[int, str]] = []
    for i, entry in _valid(data, "models", ModelEntry):
        over = entry.overrides()
        try:
            effective_settings(base, entry)
        except ValidationError as exc:
            for e in exc.errors():
                # A problem of the defaults alone is reported once, under `defaults`.
                if _reaches(over, tuple(e["loc"])):
                    at = _line(node, ("models", i, *e["loc"]))
                    problems.append((at, f"model '{entry.name}': {describe_error(e)}"))
    return problems


# Settings of a pod of its own: a packed model shares its pack's pods (`packing`).
_POD_SETTINGS = (("replicas",), ("cpu",), ("autoscaling",), ("memory", "fixed_mib"))


def _packing_problems(data: dict[str, Any], node: Any) -> list[tuple[int, str]]:
    """With packing on, a packed model may not set what only a pod of its own has."""
    packing = data.get("packing")
    if not isinstance(packing, dict) or packing.get("enabled") is not True:
        return []
    problems: list[tuple[int, str]] = []
    defaults = data.get("defaults")
    if _reaches(defaults, ("memory", "fixed_mib")):
        at = _line(node, ("defaults", "memory", "fixed_mib"))
        problems.append(
            (
                at,
                "defaults: memory.fixed_mib: packed models are placed by their measured "
                "memory; set fixed_mib on dedicated models only",
            )
        )
    for i, entry in _valid(data, "models", ModelEntry):
        if entry.dedicated:
            continue
        over = entry.overrides()
        for loc in _POD_SETTINGS:
            if _reaches(over, loc) and _value(over, loc) is not None:
                at = _line(node, ("models", i, *loc))
                why = (
                    "a packed model is placed by its measured memory"
                    if loc == ("memory", "fixed_mib")
                    else "a packed model shares its pack's pods (packing.replicas, packing.cpu)"
                )
                problems.append(
                    (
                        at,
                        f"model '{entry.name}': {'.'.join(loc)}: {why}; set 'dedicated: true' "
                        "to give it pods of its own",
                    )
                )
    return problems


def _value(data: Any, loc: tuple[Any, ...]) -> Any:
    for key in loc:
        data = data[key]
    return data


def _reaches(data: Any, loc: tuple[Any, ...]) -> bool:
    for key in loc:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def _who(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """`model 'name'` or `experiment '/route'` for a location under models/experiments."""
    if len(loc) < 2 or loc[0] not in ("models", "experiments") or not isinstance(loc[1], int):
        return ""
    items = _items(data, loc[0])
    raw = items[loc[1]] if loc[1] < len(items) else None
    if loc[0] == "models":
        name = raw.get("name") if isinstance(raw, dict) else None
        return f"model '{name}'" if name else f"model #{loc[1] + 1}"
    route = raw.get("route") if isinstance(raw, dict) else None
    return f"experiment '{route}'" if route else f"experiment #{loc[1] + 1}"


def _locate(node: Any, data: dict[str, Any], error: Any) -> tuple[int, str]:
    loc = tuple(error["loc"])
    who = _who(data, loc)
    err = dict(error)
    err["loc"] = loc[2:] if who else loc
    return _line(node, loc), f"{who}: {describe_error(err)}" if who else describe_error(err)


def _node(node: Any, loc: tuple[Any, ...]) -> Any:
    """The YAML node at exactly `loc`, or None."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else None
        else:
            return None
        if node is None:
            return None
    return node


def _line(node: Any, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest YAML node that `loc` reaches."""
    best = node
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == key), None)
            if child is None and isinstance(key, str):
                # an unknown key: point at the key itself
                child = next((k for k, _ in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            child = node.value[key] if key < len(node.value) else None
        if child is None:
            break
        node = best = child
    mark = getattr(best, "start_mark", None)
    return mark.line + 1 if mark is not None else 1
