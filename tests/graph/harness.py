"""Run the Pulumi program under Pulumi's mocks and capture every registered resource.

Only the Pulumi engine is mocked. For our two dynamic resources the mock answers what
the engine would get back from the provider: outputs computed from the inputs (an image
digest from the content hash, memory numbers from the content hash), so tests can check
that the Deployment takes exactly those numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

from components.config import IngressConfig, RegistryAuth, RouterConfig, StackConfig

IMAGE_TYPE = "pulumi-python:dynamic/fleet:ModelImage"
PROFILE_TYPE = "pulumi-python:dynamic/fleet:MemoryProfile"
ROUTER_IMAGE_TYPE = "pulumi-python:dynamic/fleet:RouterImage"
SECRET_INPUTS = ("registry_password", "mlflow_token")
PRODUCTION_NAMESPACE = "fleet"
"""The namespace of `stack_config()`."""


def stack_config() -> StackConfig:
    """Production-like config; built inside the Pulumi runtime (it holds secret Outputs)."""
    return StackConfig(
        stack="production",
        namespace=PRODUCTION_NAMESPACE,
        models_file="models.yaml",
        alias="champion",
        tracking_uri="https://mlflow.example.com",
        registry="registry.example.com/model-fleet",
        base_image="model-fleet/base:bookworm",
        ca_bundle=None,
        push=True,
        router=RouterConfig(image="registry.example.com/model-fleet/router:0.1.0", replicas=3),
        ingress=IngressConfig(host="models.example.com", tls_secret="models-tls"),
        registry_auth=RegistryAuth(
            server="registry.example.com",
            username="ci",
            password=pulumi.Output.secret("pw"),
        ),
        mlflow_token=pulumi.Output.secret("token"),
        extra_labels={"team": "pricing"},
    )


def fake_digest(content_hash: str) -> str:
    return "sha256:" + hashlib.sha256(content_hash.encode()).hexdigest()


def fake_memory(content_hash: str) -> tuple[int, int]:
    """(request, limit) MiB the mocked profile reports for an image."""
    request = 300 + int(content_hash[:4], 16) % 300
    return request, request + 64 + int(content_hash[4:6], 16)


@dataclass
class Registered:
    """One resource the program registered."""

    urn: str
    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parent: str

    def k8s_object(self) -> dict[str, Any]:
        """The Kubernetes object as it would be sent to the API server."""
        # pulumi_kubernetes fills in apiVersion and kind itself; check it chose the type's.
        kind = self.typ.rsplit(":", 1)[1]
        assert self.inputs["kind"] == kind, self.urn
        api_version = self.inputs["apiVersion"]
        body = {k: plain(v) for k, v in self.inputs.items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": api_version, "kind": kind, **body}


SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""Key that marks a secret value in Pulumi's wire format."""


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def plain(value: Any) -> Any:
    """`value` as the API server would get it: secrets unwrapped, whole floats as ints
    (the mock monitor's wire format carries every number as a double)."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FleetMocks(pulumi.runtime.Mocks):
    """The engine: returns inputs as outputs, plus what our providers would add."""

    def __init__(self) -> None:
        self.inputs: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.inputs[(args.typ, args.name)] = dict(args.inputs)
        outs = dict(args.inputs)
        if args.typ in (IMAGE_TYPE, ROUTER_IMAGE_TYPE):
            outs = {k: v for k, v in outs.items() if k not in SECRET_INPUTS}
            digest = fake_digest(outs["content_hash"])
            repo = outs["image_ref"].rsplit(":", 1)[0]
            outs.update(digest=digest, image=f"{repo}@{digest}", image_id=digest, built=True)
        elif args.typ == PROFILE_TYPE:
            request, limit = fake_memory(outs["content_hash"])
            outs.update(request_mib=request, limit_mib=limit, peak_mib=float(request))
            outs.update(idle_mib=request / 2, p95_mib=float(request), summary="mocked")
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


class RecordingMonitor(MockMonitor):
    """The mock monitor, also remembering each resource's parent URN."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.parents: dict[str, str] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.parents[response.urn] = request.parent
        return response


@dataclass
class Capture:
    """Everything one program run registered, by URN."""

    resources: dict[str, Registered] = field(default_factory=dict)
    result: Any = None

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources.values() if r.typ == typ]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources.values() if r.name == name]
        assert len(found) == 1, f"{len(found)} resources named {name}"
        return found[0]

    def children(self, parent: Registered) -> list[Registered]:
        return [r for r in self.resources.values() if r.parent == parent.urn]

    def k8s(self) -> list[Registered]:
        return [
            r
            for r in self.resources.values()
            if r.typ.startswith("kubernetes:") and not r.typ.startswith("pulumi:providers")
        ]


def run_program(
    body: Callable[[], Any],
    *,
    stack: str = "staging",
    config: dict[str, str] | None = None,
    secret_keys: list[str] | None = None,
) -> Capture:
    """Run `body` (which creates resources) under mocks; return what it registered."""
    mocks = FleetMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project="model-fleet", stack=stack, preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config(config or {}, secret_keys or [])
    capture = Capture()

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def run() -> Any:
        capture.result = body()
        return None

    run()
    for urn, reg in monitor.get_registered_resources().items():
        typ = urn.split("::")[2].split("$")[-1]
        name = urn.split("::")[3]
        given = mocks.inputs.get((typ, name), {})
        inputs = {k: v for k, v in given.items() if k != "__provider"}
        capture.resources[urn] = Registered(
            urn, typ, name, inputs, reg.state, monitor.parents.get(urn, "")
        )
    return capture


def config_json(value: Any) -> str:
    return json.dumps(value)
