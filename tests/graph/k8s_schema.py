"""Validate Kubernetes objects against the API's JSON schema (kubernetes-validate's files).

`kubernetes_validate.validate` re-reads and re-parses the schema files on every call;
for the ~1000 objects of a 200-model fleet that dominates the test time. This keeps one
validator per (apiVersion, kind), built exactly as kubernetes_validate builds it, so each
object is still checked against the strict schema of the chosen version.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
from kubernetes_validate import utils
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.33.0"
"""The cluster version we target; kubernetes-validate ships its schemas."""


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    version = KUBERNETES_VERSION
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"v{version}-local-strict"
    schema = utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version
    )
    defs = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(defs) @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema error of `obj`, as `path: message`; empty when it validates."""
    validator = _validator(obj["apiVersion"], obj["kind"])
    return [
        f"{obj['kind']}/{obj.get('metadata', {}).get('name')}: "
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def validate_with_library(obj: dict[str, Any]) -> None:
    """The library's own entry point, for a spot check that both agree."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
