"""Stack config is read in one place into one typed object; errors name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from components.config import StackConfig, load_stack_config
from fleet.errors import ConfigError
from tests.graph.harness import FleetMocks

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "fleet:trackingUri": "sqlite:///.fleet/mlflow.db",
    "fleet:registry": "localhost:5000/fleet",
    "fleet:router": json.dumps({"image": "localhost:5000/fleet/router:dev"}),
    "fleet:ingress": json.dumps({"host": "fleet.localtest.me"}),
}


def read(config: dict[str, str], secret_keys: list[str] | None = None) -> StackConfig:
    pulumi.runtime.set_mocks(FleetMocks(), project="model-fleet", stack="dev", preview=True)
    pulumi.runtime.set_all_config(config, secret_keys or [])
    return load_stack_config()


def test_defaults_live_in_one_place():
    cfg = read(BASE)
    assert cfg.stack == "dev"
    assert (cfg.namespace, cfg.models_file, cfg.alias) == ("fleet", "models.yaml", None)
    assert cfg.push is True and cfg.profile_requests == 200
    assert (cfg.router.replicas, cfg.router.cpu, cfg.router.memory_mib) == (2, "250m", 256)
    assert (cfg.ingress.class_name, cfg.ingress.tls_secret) == ("nginx", None)
    assert (cfg.ingress.controller_namespace, cfg.ingress.public_docs) == ("ingress-nginx", True)
    assert cfg.registry_auth is None and cfg.mlflow_token is None


def test_explicit_false_is_kept_and_a_bad_count_is_refused():
    cfg = read({**BASE, "fleet:push": "false", "fleet:profileRequests": "20"})
    assert cfg.push is False and cfg.profile_requests == 20
    with pytest.raises(ConfigError, match="fleet:profileRequests"):
        read({**BASE, "fleet:profileRequests": "0"})


def test_registry_user_needs_the_secret_password():
    with pytest.raises(pulumi.ConfigMissingError, match="fleet:registryPassword"):
        read({**BASE, "fleet:registryUsername": "ci"})
    cfg = read(
        {**BASE, "fleet:registryUsername": "ci", "fleet:registryPassword": "pw"},
        ["fleet:registryPassword"],
    )
    assert cfg.registry_auth is not None and cfg.registry_auth.server == "localhost:5000"


def test_remote_mlflow_needs_the_token():
    remote = {**BASE, "fleet:trackingUri": "https://mlflow.example.com"}
    with pytest.raises(pulumi.ConfigMissingError, match="fleet:mlflowToken"):
        read(remote)


@pytest.mark.parametrize("key", ["fleet:registry", "fleet:trackingUri"])
def test_missing_required_key_is_named(key):
    with pytest.raises(pulumi.ConfigMissingError, match=key):
        read({k: v for k, v in BASE.items() if k != key})


def test_missing_nested_key_is_named():
    with pytest.raises(pulumi.ConfigMissingError, match=r"fleet:ingress\.host"):
        read({**BASE, "fleet:ingress": json.dumps({"className": "nginx"})})


def test_prometheus_namespace_is_optional_and_checked():
    assert read(BASE).prometheus_namespace is None
    assert read({**BASE, "fleet:prometheusNamespace": "monitoring"}).prometheus_namespace == (
        "monitoring"
    )
    with pytest.raises(ConfigError, match="fleet:prometheusNamespace"):
        read({**BASE, "fleet:prometheusNamespace": "Monitoring_NS"})


def test_ingress_namespace_and_public_docs():
    cfg = read({**BASE, "fleet:ingressNamespace": "traefik", "fleet:publicDocs": "false"})
    assert (cfg.ingress.controller_namespace, cfg.ingress.public_docs) == ("traefik", False)
    with pytest.raises(ConfigError, match="fleet:ingressNamespace"):
        read({**BASE, "fleet:ingressNamespace": "Ingress_NGINX"})


def test_router_image_is_built_unless_given():
    assert read(BASE).router.image == "localhost:5000/fleet/router:dev"
    assert read({**BASE, "fleet:router": json.dumps({"replicas": 1})}).router.image is None


@pytest.mark.parametrize(
    ("stack", "alias", "secrets", "docs"),
    [
        ("dev", None, {}, True),
        ("staging", "challenger", {"registryPassword": "pw", "mlflowToken": "t"}, True),
        ("production", "champion", {"registryPassword": "pw", "mlflowToken": "t"}, False),
    ],
)
def test_stack_files_hold_what_the_program_reads(stack, alias, secrets, docs):
    """Each Pulumi.<stack>.yaml, as the engine would hand it over (secrets set apart)."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    config.update({f"fleet:{k}": v for k, v in secrets.items()})
    cfg = read(config, [f"fleet:{k}" for k in secrets])
    assert cfg.alias == alias
    assert (cfg.registry_auth is None) == (stack == "dev")
    assert cfg.ingress.host and cfg.router.image is None  # built by the program
    # Production publishes no API docs; the ingress controller runs in ingress-nginx.
    assert cfg.ingress.public_docs is docs
    assert cfg.ingress.controller_namespace == "ingress-nginx"


def test_mlflow_basic_auth_instead_of_a_token():
    remote = {**BASE, "fleet:trackingUri": "https://mlflow.example.com"}
    with pytest.raises(pulumi.ConfigMissingError, match="fleet:mlflowPassword"):
        read({**remote, "fleet:mlflowUsername": "fleet-ci"})
    cfg = read(
        {**remote, "fleet:mlflowUsername": "fleet-ci", "fleet:mlflowPassword": "pw"},
        ["fleet:mlflowPassword"],
    )
    assert cfg.mlflow_username == "fleet-ci" and cfg.mlflow_token is None
    assert cfg.mlflow_password is not None
