"""Run the Pulumi program under Pulumi's mocks and capture every registered resource.

Only the Pulumi engine is mocked. The harness records, per resource, what the program
sent the engine: inputs, parent, and dependencies (explicit `depends_on` and those carried
by outputs, per input property), so tests can check the order the engine would follow.

In an `up` (`preview=False`), the mock answers for our dynamic resources what their
providers would return after building, pushing and measuring. Those answers are
stand-ins (`stand_in_digest`, `stand_in_memory`): deterministic in the content hash, as
the stack's state keeps them for an unchanged image, but made up. Tests may follow a
stand-in through the graph (the Deployment runs the image the image resource returned,
with the memory the profile returned) and never assert the stand-in as a result.
In a preview (`preview=True`) the mock answers what the engine has before any provider
ran: the inputs, so every provider-computed output is unknown.
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
from components.wire import SECRET_INPUTS

IMAGE_TYPE = "pulumi-python:dynamic/fleet:ModelImage"
PROFILE_TYPE = "pulumi-python:dynamic/fleet:MemoryProfile"
ROUTER_IMAGE_TYPE = "pulumi-python:dynamic/fleet:RouterImage"
PACK_IMAGE_TYPE = "pulumi-python:dynamic/fleet:PackImage"
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
        ingress=IngressConfig(
            host="models.example.com", tls_secret="models-tls", public_docs=False
        ),
        registry_auth=RegistryAuth(
            server="registry.example.com",
            username="ci",
            password=pulumi.Output.secret("pw"),
        ),
        mlflow_token=pulumi.Output.secret("token"),
        extra_labels={"team": "pricing"},
    )


def stand_in_digest(content_hash: str) -> str:
    """STAND-IN: the digest the mock returns for a push (no image was built)."""
    return "sha256:" + hashlib.sha256(content_hash.encode()).hexdigest()


def stand_in_pack_size(content_hash: str) -> dict[str, float]:
    """STAND-IN: what a packed model's profile returns for its pack (nothing measured):
    a baseline near a lean server's and a few MiB per model, different per image."""
    baseline = 150.0 + int(content_hash[:2], 16) % 40
    marginal = 1.0 + int(content_hash[2:4], 16) % 8
    return {
        "baseline_p95_mib": baseline,
        "baseline_peak_mib": baseline + 5,
        "marginal_p95_mib": marginal,
        "marginal_peak_mib": marginal + 1,
    }


def stand_in_memory(content_hash: str) -> tuple[int, int]:
    """STAND-IN: (request, limit) MiB the mock returns for a profile (nothing was
    measured); different per image, so a test can tell which profile a Deployment got."""
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
    dependencies: frozenset[str] = frozenset()
    """URNs the engine waits for before this resource: explicit `depends_on` (a component
    stands for its descendants) and those carried by output-valued inputs."""
    property_dependencies: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per input property, the URNs its value came from (outputs of those resources)."""

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
    """The engine: returns inputs as outputs; in an `up`, plus stand-ins for what our
    providers would add (see the module's docstring)."""

    def __init__(self, preview: bool = False) -> None:
        self.preview = preview
        self.inputs: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.inputs[(args.typ, args.name)] = dict(args.inputs)
        outs = dict(args.inputs)
        if self.preview or args.typ not in (
            IMAGE_TYPE,
            ROUTER_IMAGE_TYPE,
            PACK_IMAGE_TYPE,
            PROFILE_TYPE,
        ):
            # A preview runs no provider: what a provider computes stays unknown.
            return f"{args.name}-id", outs
        outs = {k: v for k, v in outs.items() if k not in SECRET_INPUTS}
        if args.typ in (IMAGE_TYPE, ROUTER_IMAGE_TYPE, PACK_IMAGE_TYPE):
            digest = stand_in_digest(outs["content_hash"])
            repo = outs["image_ref"].rsplit(":", 1)[0]
            outs.update(digest=digest, image=f"{repo}@{digest}", image_id=digest, built=True)
        else:
            request, limit = stand_in_memory(outs["content_hash"])
            outs.update(request_mib=request, limit_mib=limit, peak_mib=float(request))
            outs.update(idle_mib=request / 2, p95_mib=float(request), summary="stand-in")
            zero = dict.fromkeys(stand_in_pack_size(outs["content_hash"]), 0.0)
            outs.update(stand_in_pack_size(outs["content_hash"]) if outs.get("pack") else zero)
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


class RecordingMonitor(MockMonitor):
    """The mock monitor, also remembering each resource's parent URN and dependencies as
    the SDK sent them in its RegisterResource request."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.parents: dict[str, str] = {}
        self.dependencies: dict[str, frozenset[str]] = {}
        self.property_dependencies: dict[str, dict[str, frozenset[str]]] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.parents[response.urn] = request.parent
        self.dependencies[response.urn] = frozenset(request.dependencies)
        self.property_dependencies[response.urn] = {
            key: frozenset(deps.urns) for key, deps in request.propertyDependencies.items()
        }
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

    def waits_for(self, res: Registered) -> set[str]:
        """URNs of every resource the engine finishes before it starts `res`.

        A resource waits for its dependencies and for its parent; a parent (a component)
        is registered only once its own dependencies are done. So this is everything
        reachable from `res` over dependency and parent edges.
        """
        seen: set[str] = set()
        todo = [res.urn]
        while todo:
            urn = todo.pop()
            node = self.resources.get(urn)
            if node is None:  # the stack itself
                continue
            for nxt in (*node.dependencies, node.parent):
                if nxt and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def after(self, later: str, earlier: str) -> bool:
        """Whether the resource named `later` waits for the one named `earlier`."""
        return self.named(earlier).urn in self.waits_for(self.named(later))

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
    preview: bool = False,
) -> Capture:
    """Run `body` (which creates resources) under mocks; return what it registered.

    `preview=True` runs it as `pulumi preview` does: outputs no provider has computed yet
    (image digests, measured memory) are unknown.
    """
    mocks = FleetMocks(preview)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project="model-fleet", stack=stack, preview=preview, monitor=monitor
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
            urn,
            typ,
            name,
            inputs,
            reg.state,
            monitor.parents.get(urn, ""),
            monitor.dependencies.get(urn, frozenset()),
            monitor.property_dependencies.get(urn, {}),
        )
    return capture


def config_json(value: Any) -> str:
    return json.dumps(value)
