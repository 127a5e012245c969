"""Assertions over a captured program run, shared by the demo and generated-fleet tests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pulumi.output import Unknown

from components.config import INGRESS_NAMESPACE
from components.manifests import MODEL_PORT
from components.network import MODELS_EGRESS, MODELS_INGRESS, ROUTER_INGRESS
from components.profile import PACK_NUMBERS
from components.router_manifests import DOCS_PATHS, ROUTER_PORT
from fleet.packing import PackSize, pack_memory
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from tests.graph.harness import IMAGE_TYPE, PACK_IMAGE_TYPE, PROFILE_TYPE, Capture
from tests.graph.k8s_schema import schema_errors
from tests.graph.pss import pod_spec_of, violations

SERVICE_TYPE = "fleet:index:ModelService"
PACK_TYPE = "fleet:index:Pack"
ROUTER_TYPE = "fleet:index:Router"
POLICY_TYPE = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
POLICIES = ("platform-models-policy", "platform-models-egress-policy", "platform-router-policy")
"""The NetworkPolicies, all children of the Platform."""
NAMESPACE_NAME = "kubernetes.io/metadata.name"


def expected_children(r: ResolvedModel) -> dict[str, str]:
    """name -> type of the children a model's ModelService must have, no more, no less."""
    k = r.model.k8s_name
    s = r.model.settings
    if r.model.packed:  # its pack serves it: image and profile only
        return {f"{k}-image": IMAGE_TYPE, f"{k}-profile": PROFILE_TYPE}
    out = {
        f"{k}-image": IMAGE_TYPE,
        f"{k}-deployment": "kubernetes:apps/v1:Deployment",
        f"{k}-service": "kubernetes:core/v1:Service",
    }
    if s.memory.fixed_mib is None:
        out[f"{k}-profile"] = PROFILE_TYPE
    pods = s.autoscaling.min_replicas if s.autoscaling else s.replicas
    if pods > 1:
        out[f"{k}-pdb"] = "kubernetes:policy/v1:PodDisruptionBudget"
    if s.autoscaling:
        out[f"{k}-hpa"] = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
    return out


def check_model_children(cap: Capture, resolved: list[ResolvedModel]) -> None:
    services = cap.of_type(SERVICE_TYPE)
    assert sorted(s.name for s in services) == sorted(r.model.k8s_name for r in resolved)
    for r in resolved:
        svc = cap.named(r.model.k8s_name)
        got = {c.name: c.typ for c in cap.children(svc)}
        assert got == expected_children(r), f"model '{r.name}': children {sorted(got)}"
    # Every packed model is in exactly one pack; a pack has its image, Deployment,
    # Service, and a PDB when it runs more than one pod.
    members = packs(cap)
    placed = sorted(m for ms in members.values() for m in ms)
    assert placed == sorted(r.name for r in resolved if r.model.packed)
    for pack in cap.of_type(PACK_TYPE):
        got = {c.name: c.typ for c in cap.children(pack)}
        want = {
            f"{pack.name}-image": PACK_IMAGE_TYPE,
            f"{pack.name}-deployment": "kubernetes:apps/v1:Deployment",
            f"{pack.name}-service": "kubernetes:core/v1:Service",
        }
        replicas = cap.named(f"{pack.name}-deployment").k8s_object()["spec"]["replicas"]
        if replicas > 1:
            want[f"{pack.name}-pdb"] = "kubernetes:policy/v1:PodDisruptionBudget"
        assert got == want, pack.name


def packs(cap: Capture) -> dict[str, list[str]]:
    """Pack name -> the models its image stacks (from the PackImage inputs)."""
    return {
        image.name.removesuffix("-image"): [m["model"]["name"] for m in image.inputs["members"]]
        for image in cap.of_type(PACK_IMAGE_TYPE)
    }


def check_packs(cap: Capture, resolved: list[ResolvedModel], fleet: Fleet) -> None:
    """Each pack runs the image its PackImage returned, stacked from its members' images
    as their image resources returned them, with memory summed from its members'
    profiles (the largest baseline plus every marginal) under the fleet's policy."""
    by_name = {r.name: r for r in resolved}
    for pack, models in packs(cap).items():
        image = cap.named(f"{pack}-image")
        dep_res = cap.named(f"{pack}-deployment")
        dep = dep_res.k8s_object()
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == image.outputs["image"]
        sizes = []
        for m in image.inputs["members"]:
            k = by_name[m["model"]["name"]].model.k8s_name
            member_image = cap.named(f"{k}-image")
            assert m["image"] == member_image.outputs["image"]
            assert m["content_hash"] == member_image.inputs["content_hash"]
            profile = cap.named(f"{k}-profile")
            assert profile.inputs["pack"] is True
            assert profile.inputs["image"] == member_image.outputs["image"]
            # STAND-IN numbers: whatever the profiles returned is what the pack sums.
            sizes.append(PackSize(*(float(profile.outputs[n]) for n in PACK_NUMBERS)))
            assert profile.urn in dep_res.property_dependencies["spec"], (pack, k)
            assert member_image.urn in image.property_dependencies["members"], (pack, k)
        want = pack_memory(sizes, fleet.defaults.memory, fleet.packing.min_marginal_mib)
        res = container["resources"]
        assert res["requests"]["memory"] == f"{want.request_mib}Mi", pack
        assert res["limits"]["memory"] == f"{want.limit_mib}Mi", pack
        assert want.limit_mib <= fleet.packing.memory_budget_mib
        assert len(models) <= fleet.packing.max_models
        assert res["requests"]["cpu"] == fleet.packing.cpu
        assert dep["spec"]["replicas"] == fleet.packing.replicas
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        assert notes["fleet.model-fleet.io/models"] == ",".join(
            sorted(f"{m}@{by_name[m].version}" for m in models)
        )
        assert notes["fleet.model-fleet.io/content-hash"] == image.inputs["content_hash"]


def check_memory_from_profile(cap: Capture, resolved: list[ResolvedModel]) -> None:
    """Each Deployment runs the image its image resource returned, with the memory its
    profile returned (or `memory.fixed_mib`), and is annotated with where it came from.

    The returned image and memory are the mock's stand-ins (no image was built, nothing
    measured): only that the program carries them to the right Deployment is checked.
    """
    for r in (r for r in resolved if not r.model.packed):
        k = r.model.k8s_name
        image = cap.named(f"{k}-image")
        dep = cap.named(f"{k}-deployment").k8s_object()
        container = dep["spec"]["template"]["spec"]["containers"][0]
        fixed = r.model.settings.memory.fixed_mib
        if fixed is None:
            profile = cap.named(f"{k}-profile")
            # The profile runs on exactly the image that is deployed (wiring).
            assert profile.inputs["image"] == image.outputs["image"]
            assert profile.inputs["content_hash"] == image.inputs["content_hash"]
            # STAND-IN numbers: whatever the profile returned, this Deployment gets them.
            want = (profile.outputs["request_mib"], profile.outputs["limit_mib"])
        else:
            want = (fixed, fixed)  # program-derived: models.yaml
        res = container["resources"]
        assert res["requests"]["memory"] == f"{want[0]}Mi", r.name
        assert res["limits"]["memory"] == f"{want[1]}Mi", r.name
        assert res["requests"]["cpu"] == r.model.settings.cpu
        # STAND-IN reference: whatever the image resource returned is what runs.
        assert container["image"] == image.outputs["image"], r.name
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        assert notes["fleet.model-fleet.io/model-name"] == r.name
        assert notes["fleet.model-fleet.io/model-version"] == str(r.version)
        assert notes["fleet.model-fleet.io/run-id"] == r.run_id
        # The hash the program computed at program time (the image resource's input).
        assert notes["fleet.model-fleet.io/content-hash"] == image.inputs["content_hash"]
    # The stand-ins differ between images, so the checks above would see a mix-up.
    profiled = [
        r for r in resolved if r.model.settings.memory.fixed_mib is None and not r.model.packed
    ]
    requests = {cap.named(f"{r.model.k8s_name}-profile").outputs["request_mib"] for r in profiled}
    assert len(profiled) < 4 or len(requests) > 1


def routes_config(cap: Capture) -> dict[str, Any]:
    """The routes config in the routes ConfigMap, after checking that the ConfigMap is
    immutable and named by its content, and that the router Deployment mounts it."""
    cm = cap.named("router-routes").k8s_object()
    text = cm["data"]["routes.json"]
    assert cm["immutable"] is True
    assert cm["metadata"]["name"] == (
        "fleet-router-routes-" + hashlib.sha256(text.encode()).hexdigest()[:10]
    )
    dep = cap.named("router-deployment").k8s_object()
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "routes", "configMap": {"name": cm["metadata"]["name"]}} in volumes
    config: dict[str, Any] = json.loads(text)
    return config


def check_router_config(
    cap: Capture, fleet: Fleet, resolved: list[ResolvedModel], namespace: str
) -> None:
    config = routes_config(cap)
    routes = {r["model"]: r for r in config["routes"]}
    assert sorted(routes) == sorted(r.name for r in resolved)
    pack_of = {m: pack for pack, ms in packs(cap).items() for m in ms}
    for r in resolved:
        route = routes[r.name]
        assert route["path"] == r.model.route
        assert route["version"] == r.version
        if r.model.packed:  # its pack's Service, under the model's own path
            want = f"http://{pack_of[r.name]}.{namespace}.svc.cluster.local:{MODEL_PORT}"
            want += f"/models/{r.name}"
        else:
            want = f"http://{r.model.k8s_name}.{namespace}.svc.cluster.local:{MODEL_PORT}"
        assert route["backend"] == want
        assert route["inputs"] == [c.to_dict() for c in r.inputs]
        shadow = fleet.shadows().get(r.model.route)
        assert route.get("shadow") == (shadow and shadow.model_dump())
    assert [r["path"] for r in config["routes"]] == sorted(r.model.route for r in resolved)
    want = [
        {
            "path": e.route,
            "sticky_header": e.sticky_header,
            "variants": sorted(
                ({"model": v.model, "weight": v.weight} for v in e.variants),
                key=lambda v: str(v["model"]),
            ),
        }
        for e in sorted(fleet.experiments, key=lambda e: e.route)
    ]
    assert config["experiments"] == want


def check_objects(cap: Capture) -> int:
    """Every Kubernetes object validates and every pod meets restricted PSS and bounds
    its node disk (emptyDir `sizeLimit`, `ephemeral-storage`); returns the count."""
    objects = [r.k8s_object() for r in cap.k8s()]
    errors = [e for obj in objects for e in schema_errors(obj)]
    assert not errors, "\n".join(errors[:20])
    for obj in objects:
        pod = pod_spec_of(obj)
        if pod is not None:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            bad = violations(pod)
            assert not bad, f"{where}: {bad}"
            assert not disk_unbounded(pod), f"{where}: {disk_unbounded(pod)}"
    return len(objects)


def disk_unbounded(pod: dict[str, Any]) -> list[str]:
    """Where `pod` (a PodSpec) may fill the node's disk: an emptyDir without `sizeLimit`,
    a container without an `ephemeral-storage` request and limit."""
    out = [
        f"emptyDir {v['name']} has no sizeLimit"
        for v in pod.get("volumes", [])
        if "emptyDir" in v and not v["emptyDir"].get("sizeLimit")
    ]
    for c in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            if not res.get(kind, {}).get("ephemeral-storage"):
                out.append(f"container {c['name']}: no ephemeral-storage in {kind}")
    return out


def policies(cap: Capture) -> dict[str, dict[str, Any]]:
    """The NetworkPolicies by resource name, after checking that they are exactly the
    platform's (children of the Platform, in the Namespace's own output)."""
    platform = cap.named("platform")
    found = cap.of_type(POLICY_TYPE)
    assert sorted(p.name for p in found) == sorted(POLICIES)
    namespace = cap.named("platform-namespace")
    for p in found:
        assert p.parent == platform.urn, p.name
        assert namespace.urn in p.property_dependencies["metadata"], p.name
    return {p.name: p.k8s_object() for p in found}


def namespaces_admitted(policy: dict[str, Any]) -> set[str]:
    """Names of the namespaces whose pods a policy's ingress rules let in (by the label
    the API server sets), after checking that every peer is such a namespace."""
    out: set[str] = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
            labels = peer["namespaceSelector"]
            assert set(labels) == {"matchLabels"} and set(labels["matchLabels"]) == {
                NAMESPACE_NAME
            }, peer
            out.add(labels["matchLabels"][NAMESPACE_NAME])
    return out


def check_network_policies(
    cap: Capture, prometheus: str | None, ingress_namespace: str = INGRESS_NAMESPACE
) -> None:
    """Router pods admit the ingress controller's and Prometheus's namespaces only, on
    the router port; model pods admit router pods (and Prometheus) on the model port and
    open no connection (an Egress policy without rules: not even DNS)."""
    found = policies(cap)
    router = found["platform-router-policy"]
    assert router["metadata"]["name"] == ROUTER_INGRESS
    assert router["spec"]["policyTypes"] == ["Ingress"]
    router_pod = cap.named("router-deployment").k8s_object()["spec"]["template"]["metadata"]
    assert router["spec"]["podSelector"]["matchLabels"].items() <= router_pod["labels"].items()
    want = {ingress_namespace} | ({prometheus} if prometheus else set())
    assert namespaces_admitted(router) == want
    for rule in router["spec"]["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": ROUTER_PORT}]
    models = found["platform-models-policy"]
    assert models["metadata"]["name"] == MODELS_INGRESS
    (from_router, *scrape) = models["spec"]["ingress"]
    assert [set(peer) for peer in from_router["from"]] == [{"podSelector"}]
    assert namespaces_admitted({"spec": {"ingress": scrape}}) == (
        {prometheus} if prometheus else set()
    )
    for rule in models["spec"]["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": MODEL_PORT}]
    egress = found["platform-models-egress-policy"]
    assert egress["metadata"]["name"] == MODELS_EGRESS
    assert egress["spec"]["policyTypes"] == ["Egress"]
    assert egress["spec"].get("egress", []) == []
    for policy in (models, egress):  # they select every model pod, and no router pod
        select = policy["spec"]["podSelector"]["matchLabels"].items()
        assert not select <= router_pod["labels"].items()
        for dep in cap.of_type("kubernetes:apps/v1:Deployment"):
            if dep.name != "router-deployment":
                pod = dep.k8s_object()["spec"]["template"]["metadata"]
                assert select <= pod["labels"].items(), dep.name


def check_ingress(cap: Capture, public_docs: bool) -> None:
    """The Ingress publishes exactly the routes and experiments of the routes config, one
    path each (`Exact` where ingress-nginx takes it), plus the docs when they are public;
    no `/` prefix, never `/metrics`."""
    config = routes_config(cap)
    ingress = cap.named("router-ingress").k8s_object()
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    routes = sorted(e["path"] for key in ("routes", "experiments") for e in config[key])
    want = routes + (list(DOCS_PATHS) if public_docs else [])
    assert [p["path"] for p in paths] == want
    for p in paths:
        assert p["pathType"] in ("Exact", "ImplementationSpecific"), p
        assert p["pathType"] == "Exact" or "." in p["path"], p
        assert p["backend"] == {"service": {"name": "fleet-router", "port": {"name": "http"}}}
    assert "/" not in [p["path"] for p in paths]
    assert not {"/metrics", "/healthz", "/readyz"} & {p["path"] for p in paths}
    assert "defaultBackend" not in ingress["spec"]


def check_dependencies(cap: Capture, resolved: list[ResolvedModel]) -> None:
    """The order the engine follows: namespace, then its pull Secret and the
    NetworkPolicies; per model, image, then profile, then Deployment, all after those
    policies; the routes and the router Deployment after every model; the router image
    after the platform only."""
    namespace = cap.named("platform-namespace")
    fences = [cap.named(name) for name in POLICIES]
    deployments = cap.of_type("kubernetes:apps/v1:Deployment")
    dedicated = [r for r in resolved if not r.model.packed]
    assert len(deployments) == len(dedicated) + len(packs(cap)) + 1
    for later in deployments:
        # Every pod, model's or router's, starts fenced in (directly or through a parent).
        assert {p.urn for p in fences} <= cap.waits_for(later), later.name
    secrets = [r for r in cap.resources.values() if r.name == "platform-pull-secret"]
    for secret in secrets:  # it names the Namespace's own output
        assert namespace.urn in secret.property_dependencies["metadata"]
    routes, router = cap.named("router-routes"), cap.named("router-deployment")
    # The Deployment mounts the ConfigMap by that resource's output (its name).
    assert routes.urn in router.property_dependencies["spec"]
    services = {s.urn for s in cap.of_type(SERVICE_TYPE)}
    of_models = {r.urn for r in cap.resources.values() if r.parent in services}
    pack_urns = {p.urn for p in cap.of_type(PACK_TYPE)}
    of_packs = {r.urn for r in cap.resources.values() if r.parent in pack_urns}
    for r in (r for r in resolved if r.model.packed):
        k = r.model.k8s_name
        profile = cap.named(f"{k}-profile")
        assert cap.named(f"{k}-image").urn in profile.property_dependencies["image"], r.name
        # A packed model's image and profile wait for nothing of the packs or the router.
        waits = cap.waits_for(profile)
        assert not waits & (of_packs | {routes.urn, router.urn}), r.name
    for pack in packs(cap):
        dep, svc = cap.named(f"{pack}-deployment"), cap.named(f"{pack}-service")
        for later in (routes, router):
            waits = cap.waits_for(later)
            assert dep.urn in waits and svc.urn in waits, (later.name, pack)
        assert not cap.waits_for(dep) & {routes.urn, router.urn}, pack
    for r in dedicated:
        k = r.model.k8s_name
        image, dep = cap.named(f"{k}-image"), cap.named(f"{k}-deployment")
        service = cap.named(f"{k}-service")
        if r.model.settings.memory.fixed_mib is None:
            profile = cap.named(f"{k}-profile")
            assert image.urn in profile.property_dependencies["image"], r.name
            assert profile.urn in dep.property_dependencies["spec"], r.name
        assert image.urn in dep.property_dependencies["spec"], r.name
        for later in (routes, router):
            waits = cap.waits_for(later)
            assert dep.urn in waits and service.urn in waits, (later.name, r.name)
        # A model waits for the platform, and for nothing of the router or other models.
        own = {c.urn for c in cap.children(cap.named(k))}
        waits = cap.waits_for(dep)
        assert namespace.urn in waits and not waits & {routes.urn, router.urn}, r.name
        assert not (waits & of_models) - own, r.name
    for built in [r for r in cap.resources.values() if r.name == "router-image"]:
        # The router image builds alongside the models, not after them.
        waits = cap.waits_for(built)
        assert namespace.urn in waits, waits
        assert not waits & of_models, sorted(waits & of_models)[:3]


def unknown_paths(value: Any, path: str = "") -> list[str]:
    """Where `value` (inputs as the engine got them) holds a preview-time unknown."""
    if isinstance(value, Unknown):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in unknown_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unknown_paths(v, f"{path}[{i}]")]
    return []


def matches(preview: Any, up: Any) -> bool:
    """Whether a preview's value is the `up`'s one, an unknown standing for anything."""
    if isinstance(preview, Unknown):
        return True
    if isinstance(preview, dict) and isinstance(up, dict):
        return preview.keys() == up.keys() and all(matches(preview[k], up[k]) for k in up)
    if isinstance(preview, list) and isinstance(up, list):
        return len(preview) == len(up) and all(map(matches, preview, up))
    return bool(preview == up)


def check_preview_graph(preview: Capture, up: Capture, resolved: list[ResolvedModel]) -> None:
    """A preview registers the same resources, parents and dependencies as an `up`, with
    the same inputs except where a provider has not run yet: those are unknown, never
    made up by the program."""
    assert preview.resources.keys() == up.resources.keys()
    for urn, p in preview.resources.items():
        u = up.resources[urn]
        assert (p.parent, p.dependencies) == (u.parent, u.dependencies), p.name
        assert p.property_dependencies == u.property_dependencies, p.name
        assert matches(p.inputs, u.inputs), p.name
    container = ".spec.template.spec.containers[0]"
    for pack in packs(up):
        dep = preview.named(f"{pack}-deployment")
        want = [f"{container}.image", f"{container}.resources.requests.memory"]
        want += [f"{container}.resources.limits.memory"]
        assert sorted(unknown_paths(dep.inputs)) == sorted(want), pack
    for r in (r for r in resolved if not r.model.packed):
        dep = preview.named(f"{r.model.k8s_name}-deployment")
        want = [f"{container}.image"]
        if r.model.settings.memory.fixed_mib is None:
            want += [f"{container}.resources.requests.memory"]
            want += [f"{container}.resources.limits.memory"]
        assert sorted(unknown_paths(dep.inputs)) == sorted(want), r.name
    # The routes are the program's own work: known, and what `up` writes.
    for name in ("router-routes", "router-service", "router-ingress", *POLICIES):
        assert unknown_paths(preview.named(name).inputs) == [], name
        assert preview.named(name).inputs == up.named(name).inputs, name
    router = unknown_paths(preview.named("router-deployment").inputs)
    built = any(r.name == "router-image" for r in preview.resources.values())
    assert router == ([f"{container}.image"] if built else [])
