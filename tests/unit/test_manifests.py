"""The pure manifest builders: plain values in, Kubernetes objects out."""

from __future__ import annotations

import base64
import json
import re

import kubernetes_validate
import pytest
from fastapi.testclient import TestClient

from components.config import IngressConfig
from components.manifests import (
    MODEL_PORT,
    ModelObjects,
    backend_url,
    model_deployment,
    model_hpa,
    model_labels,
    model_pdb,
    model_selector,
    model_service,
)
from components.network import (
    Fences,
    models_egress_policy,
    models_ingress_policy,
    network_policies,
    router_ingress_policy,
)
from components.platform import docker_config, namespace_metadata
from components.pod import EPHEMERAL_LIMIT_MIB, EPHEMERAL_REQUEST_MIB, RUN_AS_USER, SCRATCH_MIB
from components.router_manifests import (
    CONFIG_DIR,
    DOCS_PATHS,
    ROUTER_OWN_PATHS,
    ROUTER_PORT,
    RouterObjects,
    image_version,
    ingress_paths,
    label_value,
    router_deployment,
    router_ingress,
    router_labels,
    router_pdb,
    router_url,
    routes_configmap,
    routes_configmap_name,
    routes_json,
)
from fleet.host.images import UID
from fleet.router.app import create_app
from fleet.router.config import CONFIG_VERSION, RouterLimits
from fleet.spec import Autoscaling, MemoryPolicy, Settings
from tests.graph.pss import violations

K8S = "1.33.0"


def objects(**settings) -> ModelObjects:
    return ModelObjects(
        k8s_name="match-probability-1-taxi-trafficaware-441ccf",
        namespace="fleet",
        model_name="match_probability_1_TAXI_trafficaware",
        version=4,
        run_id="774ebd704b8b468c8b78606d2fcba900",
        model_uri="models:/match_probability_1_TAXI_trafficaware/4",
        content_hash="3438973da0db1730",
        settings=Settings(**settings),
        image="localhost:5000/fleet/m@sha256:" + "a" * 64,
        memory_request="420Mi",
        memory_limit="700Mi",
    )


def router(**over) -> RouterObjects:
    args = {
        "namespace": "fleet",
        "image": "registry.example.com/fleet/router:0.1.0",
        "version": "0.1.0",
        "routes_json": routes_json({"version": 1, "routes": []}),
        "ingress": IngressConfig(host="models.example.com", tls_secret="models-tls"),
    }
    args.update(over)
    return RouterObjects(**args)


def fences(**over) -> Fences:
    args = {"namespace": "fleet", "ingress_namespace": "ingress-nginx"}
    args.update(over)
    return Fences(**args)


def routes(*paths: str, experiments: tuple[str, ...] = ()) -> str:
    """A routes config's JSON with model routes and experiments on `paths` (only the
    paths matter to the Ingress)."""
    config = {
        "version": 1,
        "routes": [{"path": p, "model": f"m{i}"} for i, p in enumerate(paths)],
        "experiments": [{"path": p, "variants": []} for p in experiments],
    }
    return routes_json(config)


def full(kind: str, api: str, obj: dict) -> dict:
    return {"apiVersion": api, "kind": kind, **obj}


def test_model_deployment_sizes_probes_and_rollout():
    dep = model_deployment(objects(cpu="500m"))
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "420Mi", "ephemeral-storage": "64Mi"},
        "limits": {"memory": "700Mi", "ephemeral-storage": "256Mi"},
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["ports"] == [{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(
        c["lifecycle"]["preStop"]["exec"]["command"][1]
    )
    assert dep["spec"]["replicas"] == 1


def test_model_pod_is_restricted_with_writable_scratch_only():
    pod = model_deployment(objects())["spec"]["template"]["spec"]
    assert violations(pod) == []
    (c,) = pod["containers"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    assert [v["emptyDir"] for v in pod["volumes"]] == [{"sizeLimit": f"{SCRATCH_MIB}Mi"}]
    # The pod runs as the user the image is built with.
    assert RUN_AS_USER == UID == pod["securityContext"]["runAsUser"]
    assert pod["enableServiceLinks"] is False


def test_a_broken_pod_is_caught_by_the_checker():
    pod = model_deployment(objects())["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    found = " ".join(violations(pod))
    for what in ("hostNetwork", "hostPath", "allowPrivilegeEscalation", "drop"):
        assert what in found


def test_labels_annotations_and_selector():
    m = objects()
    labels = model_labels(m)
    assert {k.split("/")[1] for k in labels} == {
        "name",
        "instance",
        "component",
        "part-of",
        "managed-by",
        "version",
    }
    assert labels["app.kubernetes.io/version"] == "4"
    # The selector must not hold anything that changes with a new model version.
    assert model_selector(m).items() <= labels.items()
    assert "app.kubernetes.io/version" not in model_selector(m)
    notes = model_deployment(m)["metadata"]["annotations"]
    assert notes["fleet.model-fleet.io/run-id"] == m.run_id
    assert notes["fleet.model-fleet.io/model-version"] == "4"


def test_pdb_only_with_more_than_one_pod():
    assert model_pdb(objects(replicas=1)) is None
    pdb = model_pdb(objects(replicas=3))
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    auto = Autoscaling(min_replicas=2, max_replicas=4)
    assert model_pdb(objects(replicas=1, autoscaling=auto)) is not None


def test_hpa_owns_replicas_when_autoscaling():
    assert model_hpa(objects()) is None
    m = objects(autoscaling=Autoscaling(min_replicas=2, max_replicas=6))
    hpa = model_hpa(m)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["name"] == m.k8s_name
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "replicas" not in model_deployment(m)["spec"]


def test_fixed_memory_policy_is_plain_data():
    policy = MemoryPolicy(fixed_mib=512)
    assert Settings(memory=policy).memory.fixed_mib == 512


@pytest.mark.parametrize(
    ("kind", "api", "build"),
    [
        ("Deployment", "apps/v1", lambda: model_deployment(objects(replicas=3))),
        ("Service", "v1", lambda: model_service(objects())),
        ("PodDisruptionBudget", "policy/v1", lambda: model_pdb(objects(replicas=3))),
        (
            "HorizontalPodAutoscaler",
            "autoscaling/v2",
            lambda: model_hpa(objects(autoscaling=Autoscaling())),
        ),
        ("Deployment", "apps/v1", lambda: router_deployment(router(), "fleet-router-routes-x")),
        ("ConfigMap", "v1", lambda: routes_configmap(router())),
        ("Ingress", "networking.k8s.io/v1", lambda: router_ingress(router())),
        (
            "Ingress",
            "networking.k8s.io/v1",
            lambda: router_ingress(router(routes_json=routes("/a/1", "/v1.2/b"))),
        ),
        ("NetworkPolicy", "networking.k8s.io/v1", lambda: models_ingress_policy(fences())),
        (
            "NetworkPolicy",
            "networking.k8s.io/v1",
            lambda: models_ingress_policy(fences(prometheus_namespace="monitoring")),
        ),
        ("NetworkPolicy", "networking.k8s.io/v1", lambda: models_egress_policy(fences())),
        ("NetworkPolicy", "networking.k8s.io/v1", lambda: router_ingress_policy(fences())),
        (
            "NetworkPolicy",
            "networking.k8s.io/v1",
            lambda: router_ingress_policy(fences(prometheus_namespace="monitoring")),
        ),
        ("Namespace", "v1", lambda: {"metadata": namespace_metadata("fleet", {})}),
    ],
)
def test_builders_validate_against_the_kubernetes_schema(kind, api, build):
    kubernetes_validate.validate(full(kind, api, build()), K8S, strict=True)


def test_schema_validation_catches_a_mistake():
    dep = model_deployment(objects())
    dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailible"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(full("Deployment", "apps/v1", dep), K8S, strict=True)


def test_routes_configmap_is_immutable_and_named_by_its_content():
    same = [routes_json({"routes": [1], "version": 1}), routes_json({"version": 1, "routes": [1]})]
    other = routes_json({"version": 1, "routes": [2]})
    names = [routes_configmap(router(routes_json=t))["metadata"]["name"] for t in (*same, other)]
    assert names[0] == names[1] != names[2]
    assert names[0] == routes_configmap_name(same[0]) and names[0].startswith(
        "fleet-router-routes-"
    )
    cm = routes_configmap(router(routes_json=other))
    assert cm["immutable"] is True and cm["data"] == {"routes.json": other}


def test_router_mounts_the_routes_configmap_it_is_given():
    dep = router_deployment(router(), "fleet-router-routes-0123456789")
    pod = dep["spec"]["template"]["spec"]
    assert violations(pod) == []
    assert {"name": "routes", "configMap": {"name": "fleet-router-routes-0123456789"}} in (
        pod["volumes"]
    )
    (c,) = pod["containers"]
    assert {"name": "routes", "mountPath": CONFIG_DIR, "readOnly": True} in c["volumeMounts"]
    assert c["args"][:2] == ["--config", f"{CONFIG_DIR}/routes.json"]
    # Another name (new routes) changes the pod template, so the router rolls.
    again = router_deployment(router(), "fleet-router-routes-9876543210")
    assert again["spec"]["template"] != dep["spec"]["template"]


def test_network_policy_admits_router_pods_to_model_pods_only():
    spec = models_ingress_policy(fences())["spec"]
    model_pod = model_deployment(objects())["spec"]["template"]["metadata"]["labels"]
    router_pod = router_deployment(router(), "cm")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= model_pod.items()
    assert not spec["podSelector"]["matchLabels"].items() <= router_pod.items()
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= router_pod.items()
    assert not peer["podSelector"]["matchLabels"].items() <= model_pod.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": MODEL_PORT}]
    assert spec["policyTypes"] == ["Ingress"]


def test_network_policy_lets_prometheus_scrape_the_model_port():
    without = models_ingress_policy(fences())["spec"]["ingress"]
    spec = models_ingress_policy(fences(prometheus_namespace="monitoring"))["spec"]
    router_rule, scrape = spec["ingress"]
    assert router_rule == without[0]
    # Pods of that namespace only (the label the API server sets), on the model port,
    # where the model server serves /metrics.
    assert scrape == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": MODEL_PORT}],
    }


def test_model_pods_open_no_connection():
    """An Egress policy without rules: no egress at all, not even DNS (the model server
    serves the model in its image and only answers)."""
    spec = models_egress_policy(fences(prometheus_namespace="monitoring"))["spec"]
    model_pod = model_deployment(objects())["spec"]["template"]["metadata"]["labels"]
    router_pod = router_deployment(router(), "cm")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= model_pod.items()
    assert not spec["podSelector"]["matchLabels"].items() <= router_pod.items()
    assert spec == {"podSelector": spec["podSelector"], "policyTypes": ["Egress"]}


def namespace_peer(name: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_router_admits_the_ingress_controller_and_prometheus_only():
    router_pod = router_deployment(router(), "cm")["spec"]["template"]["metadata"]["labels"]
    model_pod = model_deployment(objects())["spec"]["template"]["metadata"]["labels"]
    port = [{"protocol": "TCP", "port": ROUTER_PORT}]
    spec = router_ingress_policy(fences())["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= router_pod.items()
    assert not spec["podSelector"]["matchLabels"].items() <= model_pod.items()
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{"from": [namespace_peer("ingress-nginx")], "ports": port}]
    spec = router_ingress_policy(
        fences(ingress_namespace="traefik", prometheus_namespace="monitoring")
    )["spec"]
    assert spec["ingress"] == [
        {"from": [namespace_peer("traefik")], "ports": port},
        {"from": [namespace_peer("monitoring")], "ports": port},
    ]
    # One namespace for both: one rule.
    same = fences(ingress_namespace="edge", prometheus_namespace="edge")
    assert len(router_ingress_policy(same)["spec"]["ingress"]) == 1


def test_the_platform_makes_every_policy_with_fixed_names():
    policies = network_policies(fences(extra_labels={"team": "pricing"}))
    assert sorted(policies) == ["models-egress-policy", "models-policy", "router-policy"]
    names = {p["metadata"]["name"] for p in policies.values()}
    assert names == {
        "fleet-models-allow-ingress",
        "fleet-models-deny-egress",
        "fleet-router-allow-ingress",
    }
    for p in policies.values():
        assert p["metadata"]["namespace"] == "fleet"
        assert p["metadata"]["labels"]["team"] == "pricing"


def test_ingress_serves_the_routes_exactly_and_nothing_else():
    r = router(routes_json=routes("/b/2", "/a/1", experiments=("/a",)))
    spec = router_ingress(r)["spec"]
    (rule,) = spec["rules"]
    backend = {"service": {"name": "fleet-router", "port": {"name": "http"}}}
    exact = [{"path": p, "pathType": "Exact", "backend": backend} for p in ("/a", "/a/1", "/b/2")]
    # ingress-nginx refuses a dot in an Exact path: those get its own kind, which it takes
    # as a prefix (the router answers the exact paths only).
    docs = [
        {"path": "/docs", "pathType": "Exact", "backend": backend},
        {"path": "/docs/oauth2-redirect", "pathType": "Exact", "backend": backend},
        *(
            {"path": p, "pathType": "ImplementationSpecific", "backend": backend}
            for p in (
                "/docs/swagger-ui-bundle.js",
                "/docs/swagger-ui.css",
                "/docs/favicon.png",
                "/openapi.json",
            )
        ),
    ]
    assert rule == {"host": "models.example.com", "http": {"paths": exact + docs}}
    assert "defaultBackend" not in spec
    no_docs = router(routes_json=r.routes_json, ingress=IngressConfig("h", public_docs=False))
    assert router_ingress(no_docs)["spec"]["rules"][0]["http"]["paths"] == exact


def test_ingress_never_publishes_the_routers_own_paths_as_routes():
    """A route on /metrics (or a docs path) would publish the router's own GET there."""
    text = routes("/metrics", "/healthz", "/docs", "/openapi.json", "/a/1")
    closed = router(routes_json=text, ingress=IngressConfig("h", public_docs=False))
    assert ingress_paths(closed) == ["/a/1"]
    assert ingress_paths(router(routes_json=text)) == ["/a/1", *DOCS_PATHS]
    # A route with a dot is published, as ImplementationSpecific.
    (path,) = router_ingress(
        router(routes_json=routes("/v1.2/m"), ingress=IngressConfig("h", public_docs=False))
    )["spec"]["rules"][0]["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1.2/m", "ImplementationSpecific")


def test_an_ingress_with_nothing_to_publish_is_valid():
    closed = router(ingress=IngressConfig("h", public_docs=False))
    ing = router_ingress(closed)
    assert ing["spec"]["rules"] == [{"host": "h"}]
    kubernetes_validate.validate(full("Ingress", "networking.k8s.io/v1", ing), K8S, strict=True)


def test_the_router_serves_what_the_ingress_knows_of_it():
    """The router app's own paths (all but the routes) are the ones the Ingress keeps for
    the docs or never publishes; its docs are where the Ingress publishes them."""
    config = {
        "version": CONFIG_VERSION,
        "limits": RouterLimits().model_dump(),
        "routes": [],
        "experiments": [],
    }
    app = create_app(config, health_interval_s=0)
    served = {getattr(route, "path", None) for route in app.routes}
    assert served == set(ROUTER_OWN_PATHS)
    assert app.openapi_url in DOCS_PATHS
    # The docs pages load nothing from elsewhere: their assets are among the docs paths.
    client = TestClient(app)
    page = client.get("/docs").text
    linked = set(re.findall(r'(?:src|href)="([^"]+)"', page)) | set(
        re.findall(r"url: '([^']+)'", page)
    )
    assert linked and linked <= set(DOCS_PATHS), linked
    for path in ROUTER_OWN_PATHS:
        if path != "/readyz":  # 503 until the lifespan ran
            assert client.get(path).status_code == 200, path
    assert "/metrics" in served and "/metrics" not in DOCS_PATHS


def test_pods_bound_their_node_disk():
    for pod in (
        model_deployment(objects())["spec"]["template"]["spec"],
        router_deployment(router(), "cm")["spec"]["template"]["spec"],
    ):
        (c,) = pod["containers"]
        assert c["resources"]["requests"]["ephemeral-storage"] == f"{EPHEMERAL_REQUEST_MIB}Mi"
        assert c["resources"]["limits"]["ephemeral-storage"] == f"{EPHEMERAL_LIMIT_MIB}Mi"
        for v in pod["volumes"]:
            if "emptyDir" in v:
                assert v["emptyDir"] == {"sizeLimit": f"{SCRATCH_MIB}Mi"}, v["name"]
    # The model pod's emptyDirs together fit in its limit.
    model_pod = model_deployment(objects())["spec"]["template"]["spec"]
    scratch = [v for v in model_pod["volumes"] if "emptyDir" in v]
    assert len(scratch) * SCRATCH_MIB <= EPHEMERAL_LIMIT_MIB


def test_ingress_tls_and_url():
    with_tls = router_ingress(router())["spec"]
    assert with_tls["tls"] == [{"hosts": ["models.example.com"], "secretName": "models-tls"}]
    plain = IngressConfig(host="fleet.localtest.me")
    assert "tls" not in router_ingress(router(ingress=plain))["spec"]
    assert router_url(plain) == "http://fleet.localtest.me"
    assert router_url(router().ingress) == "https://models.example.com"


def test_router_pdb_and_labels():
    assert router_pdb(router(replicas=1)) is None
    assert router_pdb(router(replicas=2)) is not None
    assert router_labels(router())["app.kubernetes.io/version"] == "0.1.0"
    assert image_version("registry.example.com/fleet/router:0.1.0") == "0.1.0"
    assert image_version("r/router@sha256:" + "b" * 64) == "b" * 12
    assert image_version("localhost:5000/router") == "latest"


def test_label_value_is_always_valid():
    assert label_value("x" * 80) == "x" * 63
    assert label_value("-a/b:c-") == "a-b-c"
    assert label_value("///") == "unknown"


def test_backend_url():
    assert backend_url("m-1a2b3c", "fleet") == "http://m-1a2b3c.fleet.svc.cluster.local:3000"


def test_namespace_and_pull_secret():
    meta = namespace_metadata("fleet", {"team": "pricing"})
    assert meta["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert meta["labels"]["team"] == "pricing"
    cfg = json.loads(docker_config("registry.example.com", "ci", "pw"))
    auth = cfg["auths"]["registry.example.com"]["auth"]
    assert base64.b64decode(auth).decode() == "ci:pw"
