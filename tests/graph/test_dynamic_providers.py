"""The image and profile dynamic providers, called directly (no engine).

`diff` decides whether `up` does any work; these tests call the real methods with the
state an earlier `up` would have stored. One test builds a real image through the
provider where a Docker engine runs; it reuses an image the serving tests built under the
same content hash (that is the cache working).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import dill
import httpx
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

import components.image
from components.image import ModelImageArgs as ImageArgs
from components.image import (
    ModelImageProvider,
    deployable_ref,
    image_inputs,
    settings_from_dict,
    settings_to_dict,
)
from components.profile import (
    MemoryProfileArgs,
    MemoryProfileProvider,
    profile_inputs,
    rederive,
)
from components.router_image import RouterImageArgs, RouterImageProvider, router_image_inputs
from components.router_manifests import CONFIG_DIR
from fleet.host import docker_cli
from fleet.host.images import UID, BuildSettings, ImageResult, content_hash, image_ref
from fleet.host.processes import Endpoint, free_port, wait_ready
from fleet.resolved import ResolvedModel
from fleet.sizing import recommend
from fleet.spec import MemoryPolicy
from profiler import ProfileGateError
from tests.graph.fleetgen import generated_fleet, with_new_version

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small():
    return generated_fleet(8)


def _image_props(resolved, **over):
    props = image_inputs(ImageArgs(resolved=resolved, build=BuildSettings(), tracking_uri="x"))
    props.update(over)
    return props


def _stored_image(props):
    """What an earlier `up` left in state for `props` (the provider's outputs)."""
    outs = {k: v for k, v in props.items() if k not in ("registry_password", "mlflow_token")}
    return {**outs, "image_id": "sha256:abc", "digest": "", "image": props["image_ref"]}


def test_resolved_model_survives_the_round_trip(small):
    r = small[1][3]
    assert ResolvedModel.from_dict(r.to_dict()) == r
    # through JSON too: the dict is what crosses a process boundary
    assert ResolvedModel.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_build_settings_survive_the_round_trip(tmp_path):
    ca = tmp_path / "ca.pem"
    settings = BuildSettings(registry="r.example/x", base_image="b:1", ca_bundle=ca)
    data = settings_to_dict(settings)
    assert "project_root" not in data and data["ca_bundle"] == str(ca)
    assert settings_from_dict(data) == settings


def test_inputs_carry_the_hash_of_fleet_build(small):
    r = small[1][0]
    props = _image_props(r)
    assert props["content_hash"] == content_hash(r, BuildSettings())
    assert props["image_ref"] == image_ref(r, BuildSettings())


def test_unchanged_hash_is_no_change(small):
    r = small[1][0]
    old = _stored_image(_image_props(r))
    news = _image_props(r, tracking_uri="https://elsewhere", mlflow_token="rotated")
    diff = ModelImageProvider().diff("id", old, news)
    assert diff.changes is False


def test_new_version_or_registry_is_a_change(small):
    _, resolved = small
    old = _stored_image(_image_props(resolved[2]))
    bumped = with_new_version(resolved, 2)[2]
    assert ModelImageProvider().diff("id", old, _image_props(bumped)).changes is True
    moved = image_inputs(
        ImageArgs(
            resolved=resolved[2], build=BuildSettings(registry="r.example/x"), tracking_uri="x"
        )
    )
    assert ModelImageProvider().diff("id", old, moved).changes is True


def test_deployable_ref_prefers_the_digest():
    ref = "localhost:5000/fleet/m-1a2b3c:abc"
    assert deployable_ref(ref, "") == ref
    digest = "localhost:5000/fleet/m-1a2b3c@sha256:" + "0" * 64
    assert deployable_ref(ref, digest) == digest
    assert deployable_ref(ref, "sha256:" + "1" * 64) == (
        "localhost:5000/fleet/m-1a2b3c@sha256:" + "1" * 64
    )


def _profile_state(resolved, **over):
    props = {
        "model": resolved.to_dict(),
        "image": "registry.example/none@sha256:" + "2" * 64,  # no such image anywhere
        "content_hash": "f" * 16,
        "memory": resolved.model.settings.memory.model_dump(mode="json"),
        "requests": 50,
    }
    state = {**props, "request_mib": 420, "limit_mib": 700}
    state.update(idle_mib=300.0, p95_mib=365.0, peak_mib=400.0, summary="earlier run")
    props.update(over)
    return state, props


def test_profile_unchanged_image_is_no_change(small):
    state, news = _profile_state(small[1][0])
    assert MemoryProfileProvider().diff("id", state, news).changes is False
    state, news = _profile_state(small[1][0], image="other@sha256:" + "3" * 64)
    assert MemoryProfileProvider().diff("id", state, news).changes is True


def test_policy_change_rederives_without_profiling(small):
    """A real update: the image named does not exist, so any profiling would fail."""
    r = small[1][0]
    policy = dict(r.model.settings.memory.model_dump(mode="json"), request_margin_percent=50)
    state, news = _profile_state(r, memory=policy)
    assert MemoryProfileProvider().diff("id", state, news).changes is True
    outs = MemoryProfileProvider().update("id", state, news).outs
    assert outs["request_mib"] == 548  # ceil(365 * 1.5)
    assert outs["limit_mib"] == 600  # max(400 * 1.5, 400 + 64)
    assert outs["peak_mib"] == 400.0 and outs["memory"] == policy


def test_policy_change_below_the_peak_fails_the_gate(small):
    r = small[1][0]
    policy = dict(r.model.settings.memory.model_dump(mode="json"), ceiling_mib=256)
    state, news = _profile_state(r, memory=policy)
    with pytest.raises(ProfileGateError, match=r.name):
        rederive(state, news)
    # The provider's update takes the same path: the gate fails it, no profiling.
    with pytest.raises(ProfileGateError, match=r.name):
        MemoryProfileProvider().update("id", state, news)


@pytest.mark.parametrize(
    "change",
    [
        {"request_margin_percent": 0},
        {"request_margin_percent": 100, "limit_factor": 1.0},
        {"limit_factor": 3.0},
        {"limit_floor_mib": 512},
        {"ceiling_mib": 400},  # at the peak, not above it
    ],
)
def test_policy_only_update_follows_the_policy(small, change):
    """Request and limit after a policy-only update are `fleet.sizing.recommend`'s
    for the stored p95 and peak; the measurement itself is kept."""
    r = small[1][0]
    policy = dict(r.model.settings.memory.model_dump(mode="json"), **change)
    state, news = _profile_state(r, memory=policy)
    outs = MemoryProfileProvider().update("id", state, news).outs
    want = recommend(365.0, 400.0, MemoryPolicy.model_validate(policy))
    assert (outs["request_mib"], outs["limit_mib"]) == (want.request_mib, want.limit_mib)
    assert (outs["idle_mib"], outs["p95_mib"], outs["peak_mib"]) == (300.0, 365.0, 400.0)
    assert outs["summary"] == "earlier run" and outs["memory"] == policy


def test_provider_outputs_hold_no_secret(small, monkeypatch):
    """What the engine stores as outputs (in plain JSON in the state) carries neither the
    registry password nor the MLflow token; the build and push are stood in for."""
    r = small[1][0]
    secret = {rpc._special_sig_key: rpc._special_secret_sig}  # wrapped, as on the wire
    password, token = {**secret, "value": "s3cret-pw"}, {**secret, "value": "s3cret-token"}
    props = _image_props(r, registry_server="r.example", registry_username="ci")
    props.update(registry_password=password, mlflow_token=token, push=True)
    chash = props["content_hash"]
    stand_in = ImageResult(props["image_ref"], "sha256:" + "4" * 64, chash, built=True)
    pushed: list[object] = []
    monkeypatch.setattr(components.image, "build_image", lambda *_a: stand_in)
    # The registry does not hold the tag yet, so the image is built and pushed.
    monkeypatch.setattr(components.image.docker_cli, "remote_digest", lambda *_a: None)
    monkeypatch.setattr(
        components.image.docker_cli,
        "push",
        lambda ref, login=None, image_id=None: (
            pushed.append((login, image_id)) or "sha256:" + "5" * 64
        ),
    )
    outs = ModelImageProvider().create(props).outs
    assert pushed and pushed[0][0] is not None  # the push did get the credentials
    assert pushed[0][1] == stand_in.image_id  # and checks the image is the one built
    assert "s3cret" not in json.dumps(outs)
    state, news = _profile_state(r, registry_username="ci", registry_password=password)
    policy = dict(r.model.settings.memory.model_dump(mode="json"), limit_factor=2.0)
    news["memory"] = policy
    outs = MemoryProfileProvider().update("id", state, news).outs  # re-derived, no run
    assert "s3cret" not in json.dumps(outs)


@pytest.mark.parametrize(
    "provider", [ModelImageProvider(), MemoryProfileProvider(), RouterImageProvider()]
)
def test_providers_pickle_by_reference_and_load_in_a_fresh_process(provider):
    blob = serialize_provider(provider)
    assert len(blob) < 2000  # by reference: no pickled module bodies
    # The engine loads the provider in its own Python process started in the project.
    code = (
        "import base64, sys, dill; "
        "p = dill.loads(base64.b64decode(sys.argv[1])); "
        "print(type(p).__module__, type(p).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, blob], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [type(provider).__module__, type(provider).__name__]
    assert type(dill.loads(base64.b64decode(blob))) is type(provider)


def _docker_ok() -> bool:
    try:
        return docker_cli.run("info", timeout=20).returncode == 0
    except OSError:
        return False


def needs_docker(test):
    """Docker-engine tests; a cold build on two busy cores with vfs storage takes minutes."""
    test = pytest.mark.docker(test)
    test = pytest.mark.skipif(not _docker_ok(), reason="no Docker engine")(test)
    return pytest.mark.timeout(1800)(test)


@pytest.fixture(scope="module")
def real_image(demo_resolved, demo_uri):
    """One real model image built through the provider (or found under its tag: the
    serving tests build the same one, and then this is the cache working)."""
    r = next(m for m in demo_resolved if m.name == "match_probability_1_TAXI_trafficaware")
    props = image_inputs(
        ImageArgs(resolved=r, build=BuildSettings(), tracking_uri=demo_uri, push=False)
    )
    return r, props, ModelImageProvider().create(props)


@needs_docker
def test_real_build_through_the_provider_then_no_work(real_image):
    _, props, created = real_image
    provider = ModelImageProvider()
    assert created.outs["image"] == props["image_ref"]  # no push: deployed by tag
    assert created.outs["image_id"].startswith("sha256:")
    # The engine stores `outs`; the next `up` diffs the same inputs against them.
    assert provider.diff(created.id, created.outs, props).changes is False
    # Even if asked again (a retried update), the tag exists: no build.
    again = provider.update(created.id, created.outs, props).outs
    assert again["built"] is False
    assert again["image_id"] == created.outs["image_id"]


@needs_docker
@pytest.mark.slow  # starts the model server in a container (minutes on two busy cores)
def test_real_profile_through_the_provider(real_image):
    r, _, created = real_image
    props = profile_inputs(
        MemoryProfileArgs(
            resolved=r,
            image=created.outs["image"],
            content_hash=created.outs["content_hash"],
            requests=40,
        )
    )
    provider = MemoryProfileProvider()
    made = provider.create(props)
    outs = made.outs
    assert 50 < outs["peak_mib"] < r.model.settings.memory.ceiling_mib
    assert outs["limit_mib"] >= outs["request_mib"] >= outs["p95_mib"]
    assert provider.diff(made.id, outs, props).changes is False


@needs_docker
def test_real_router_image_runs_read_only_as_in_the_pod(tmp_path):
    """Build the router image through its provider, then run it the way the pod does:
    non-root, read-only root, all capabilities dropped, only /tmp writable."""
    props = router_image_inputs(RouterImageArgs(build=BuildSettings(), push=False))
    provider = RouterImageProvider()
    created = provider.create(props)
    assert provider.diff(created.id, created.outs, props).changes is False
    again = provider.update(created.id, created.outs, props).outs
    assert again["built"] is False and again["image_id"] == created.outs["image_id"]
    route = {
        "path": "/probability/1/TAXI",
        "model": "m",
        "version": 1,
        "backend": "http://127.0.0.1:9",
        "inputs": [{"name": "x", "type": "double", "required": True}],
    }
    (tmp_path / "routes.json").write_text(json.dumps({"version": 1, "routes": [route]}))
    tmp_path.chmod(0o755)
    port = free_port()
    docker = docker_cli.docker()
    run = [docker, "run", "--detach", "--rm", "--network", "host", "--read-only"]
    run += ["--tmpfs", "/tmp", "--user", f"{UID}:{UID}", "--cap-drop", "ALL"]
    run += ["--security-opt", "no-new-privileges", "-v", f"{tmp_path}:{CONFIG_DIR}:ro"]
    run += [created.outs["image"], "--config", f"{CONFIG_DIR}/routes.json"]
    run += ["--host", "127.0.0.1", "--port", str(port)]
    cid = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        failed = wait_ready([Endpoint(url)], 120, path="/healthz")
        logs = subprocess.run([docker, "logs", cid], capture_output=True, text=True).stdout
        assert failed == [], logs
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    finally:
        subprocess.run([docker, "rm", "--force", cid], capture_output=True)
