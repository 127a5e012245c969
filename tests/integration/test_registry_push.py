"""A real OCI registry (Debian's docker-registry with htpasswd auth, started by .ci/run):
a model image is pushed with a login, pulled back by digest, and profiled on a runner
that does not have it (the MemoryProfile provider over Pulumi's gRPC protocol pulls it).

Skipped, with the reason, when no Docker engine answers or FLEET_TEST_REGISTRY names no
registry. The image is the small demo model's, built with the registry as its prefix.
"""

from __future__ import annotations

import glob
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from components.config import RegistryAuth
from components.image import ModelImageArgs, ModelImageProvider, image_inputs
from components.pack_image import (
    PackImageArgs,
    PackImageProvider,
    PackMemberArgs,
    pack_image_inputs,
)
from components.profile import MemoryProfileArgs, MemoryProfileProvider, profile_inputs
from fleet.errors import BuildError
from fleet.host import docker_cli
from fleet.host.environment import child_env
from fleet.host.images import (
    BuildSettings,
    ImageResult,
    build_image,
    build_router_image,
    kept_layer_path,
    router_ref,
)
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from tests.support import OciRegistry, by_name, dynamic_provider, provider_create, secret

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
SMALL = "match_probability_1_TAXI_trafficaware"  # the profiler's docker test uses it too
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def user_docker_config() -> dict[str, object]:
    """~/.docker/config.json of the user running the tests ({} when there is none)."""
    path = Path.home() / ".docker" / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def private_configs() -> set[str]:
    return set(glob.glob(str(Path(tempfile.gettempdir()) / "fleet-docker-config-*")))


def forget(*refs: str) -> None:
    """Remove `refs` from the engine, as on a runner that never had them."""
    for ref in refs:
        docker_cli.run("rmi", ref)
    assert [r for r in refs if docker_cli.inspect(r) is not None] == []


@pytest.fixture(scope="module")
def small(demo_resolved: list[ResolvedModel]) -> ResolvedModel:
    return by_name(demo_resolved, SMALL)


@pytest.fixture(scope="module")
def pushed(
    image_registry: OciRegistry,
    small: ResolvedModel,
    demo_registry: Registry,
    model_store: ModelStore,
) -> tuple[ImageResult, str, dict[str, object], set[str]]:
    """(the image, its `repo@sha256:` from the push, the user's docker config before the
    push, the private client configs before it)."""
    settings = BuildSettings(store=model_store, registry=f"{image_registry.server}/fleet")
    built = build_image(small, demo_registry, settings)
    before, configs = user_docker_config(), private_configs()
    digest_ref = docker_cli.push(built.image_ref, image_registry.login())
    return built, digest_ref, before, configs


def test_a_push_logs_in_privately_and_returns_the_registry_digest(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]], image_registry: OciRegistry
) -> None:
    built, digest_ref, before, configs = pushed
    repo, tag = built.image_ref.rsplit(":", 1)
    assert digest_ref.startswith(f"{repo}@sha256:")
    # The registry itself serves the tag under that digest.
    path = repo.removeprefix(image_registry.server)
    status, headers, _ = image_registry.get(f"/v2{path}/manifests/{tag}", accept=MANIFEST)
    assert status == 200
    assert headers["Docker-Content-Digest"] == digest_ref.split("@", 1)[1]
    # The login went into a private client config, removed after the push: the user's
    # own config did not change and holds no credentials for the registry.
    after = user_docker_config()
    assert after == before
    assert image_registry.server not in json.dumps(after)
    assert private_configs() == configs


def test_a_pull_by_digest_needs_the_login_and_brings_the_image_back(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]], image_registry: OciRegistry
) -> None:
    built, digest_ref, _, _ = pushed
    forget(built.image_ref, digest_ref)
    with pytest.raises(BuildError, match=r"no basic auth credentials|unauthorized"):
        docker_cli.pull(digest_ref)  # the user's own config has no login for it
    info = docker_cli.pull(digest_ref, image_registry.login())
    assert info["Id"] == built.image_id
    assert digest_ref in info["RepoDigests"]
    assert image_registry.server not in json.dumps(user_docker_config())


def test_a_wrong_password_is_refused_naming_the_registry(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]], image_registry: OciRegistry
) -> None:
    built, digest_ref, _, _ = pushed
    wrong = image_registry.login(password="not-the-password")
    with pytest.raises(BuildError) as push:
        docker_cli.push(built.image_ref, wrong)
    with pytest.raises(BuildError) as pull:
        docker_cli.pull(digest_ref, wrong)
    for failed in (push, pull):
        message = str(failed.value)
        assert f"docker login {image_registry.server} as {image_registry.username} failed" in (
            message
        )
        assert "not-the-password" not in message


def test_a_fresh_runner_pulls_the_image_before_it_profiles(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]],
    image_registry: OciRegistry,
    small: ResolvedModel,
    tmp_path: Path,
) -> None:
    """The MemoryProfile provider, driven over gRPC in `python -m pulumi.dynamic` as the
    engine drives it, with the registry password a secret on the wire, on an engine that
    does not have the image: it pulls by digest with the login and measures."""
    built, digest_ref, _, _ = pushed
    forget(built.image_ref, digest_ref)
    auth = RegistryAuth(image_registry.server, image_registry.username, "placeholder")
    props = profile_inputs(
        MemoryProfileArgs(
            resolved=small,
            image=digest_ref,
            content_hash=built.content_hash,
            requests=20,
            auth=auth,  # its password: the secret set below
        )
    )
    props["registry_password"] = secret(image_registry.password)
    # Its own folder: no profile report cached by an earlier run can stand in for a run.
    with dynamic_provider(tmp_path, tmp_path / "provider.log") as stub:
        id_, outs = provider_create(stub, props, MemoryProfileProvider(), timeout_s=1500)
    assert id_ == f"{SMALL}@{built.content_hash}"
    info = docker_cli.inspect(digest_ref)
    assert info is not None and info["Id"] == built.image_id  # pulled
    assert 100 <= outs["idle_mib"] <= outs["peak_mib"] <= 2000
    assert outs["request_mib"] >= outs["p95_mib"] and outs["limit_mib"] >= outs["request_mib"]
    assert outs["image"] == digest_ref
    assert "registry_password" not in outs  # the password is never an output
    assert image_registry.password not in json.dumps(outs, default=str)


def test_a_tag_the_registry_holds_is_never_pushed_over(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]], image_registry: OciRegistry
) -> None:
    """Another image under the same tag on this engine (a differently built or a
    poisoned one): the push leaves the registry's image and returns its digest."""
    built, digest_ref, _, _ = pushed
    repo, tag = built.image_ref.rsplit(":", 1)
    try:
        docker_cli.check("tag", BuildSettings().base_image, built.image_ref)
        assert docker_cli.push(built.image_ref, image_registry.login()) == digest_ref
    finally:
        docker_cli.run("rmi", built.image_ref)
    path = repo.removeprefix(image_registry.server)
    _, headers, _ = image_registry.get(f"/v2{path}/manifests/{tag}", accept=MANIFEST)
    assert headers["Docker-Content-Digest"] == digest_ref.split("@", 1)[1]


def test_an_up_on_a_fresh_runner_builds_nothing_the_registry_has(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]],
    image_registry: OciRegistry,
    small: ResolvedModel,
    demo_uri: str,
    model_store: ModelStore,
) -> None:
    """A create of an unchanged model (a new stack, lost state) on a runner without the
    image: the tag in the registry gives the digest; nothing is built or pushed."""
    built, digest_ref, _, _ = pushed
    forget(built.image_ref, digest_ref)
    settings = BuildSettings(store=model_store, registry=f"{image_registry.server}/fleet")
    auth = RegistryAuth(image_registry.server, image_registry.username, "placeholder")
    props = image_inputs(
        ModelImageArgs(resolved=small, build=settings, tracking_uri=demo_uri, auth=auth)
    )
    props["registry_password"] = secret(image_registry.password)  # as on the wire
    outs = ModelImageProvider().create(props).outs
    assert outs["built"] is False
    assert outs["image"] == outs["digest"] == digest_ref
    assert docker_cli.inspect(built.image_ref) is None  # nothing was built
    assert image_registry.password not in json.dumps(outs, default=str)


def test_the_base_image_is_pushed_and_builds_pull_it_by_digest(
    image_registry: OciRegistry, tmp_path: Path
) -> None:
    """`scripts/base-image.sh TAG PUSH_TO` pushes the base and prints its digest
    reference; a build on an engine without that reference pulls it with the login."""
    login = image_registry.login()
    push_to = f"{image_registry.server}/fleet/base:bookworm"
    with docker_cli.logged_in(login) as config:  # as the CI job's `docker login` does
        made = subprocess.run(
            ["bash", str(ROOT / "scripts" / "base-image.sh"), BuildSettings().base_image, push_to],
            env=child_env({"DOCKER_CONFIG": str(config), "DOCKER": docker_cli.docker()}),
            capture_output=True,
            text=True,
            check=False,
        )
    assert made.returncode == 0, made.stderr
    digest_ref = made.stdout.strip().splitlines()[-1]
    assert digest_ref.startswith(f"{image_registry.server}/fleet/base@sha256:")
    docker_cli.run("rmi", push_to, digest_ref)  # a runner that never had it by this name
    assert docker_cli.inspect(digest_ref) is None
    settings = BuildSettings(base_image=digest_ref, login=login, registry="fresh.example/fleet")
    built = build_router_image(router_ref(settings), settings)
    base = docker_cli.inspect(digest_ref)
    assert base is not None  # pulled
    image = docker_cli.inspect(built.image_ref)
    assert image is not None
    assert image["RootFS"]["Layers"][: len(base["RootFS"]["Layers"])] == base["RootFS"]["Layers"]
    docker_cli.run("rmi", built.image_ref)


def test_an_image_re_tagged_in_the_engine_is_neither_reused_nor_pushed(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]],
    image_registry: OciRegistry,
    small: ResolvedModel,
    demo_registry: Registry,
    model_store: ModelStore,
) -> None:
    """Another job on the engine tags an image of its own under the tag a deploy is about
    to build (tags are content hashes anyone can compute): the build stops naming the tag,
    and a push of a tag that is not the image built is refused before anything is sent."""
    built, _, _, _ = pushed
    settings = BuildSettings(store=model_store, registry=f"{image_registry.server}/fleet")
    poison = BuildSettings().base_image
    try:
        docker_cli.check("tag", poison, built.image_ref)
        with pytest.raises(BuildError, match="not built here") as err:
            build_image(small, demo_registry, settings)
        assert built.image_ref in str(err.value) and "docker rmi" in str(err.value)
        fresh = f"{built.image_ref.rsplit(':', 1)[0]}:poisoned"
        docker_cli.check("tag", poison, fresh)
        with pytest.raises(BuildError, match="re-tagged"):
            docker_cli.push(fresh, image_registry.login(), image_id=built.image_id)
        assert docker_cli.remote_digest(fresh, image_registry.login()) is None
    finally:
        docker_cli.run("rmi", f"{built.image_ref.rsplit(':', 1)[0]}:poisoned", built.image_ref)
    # With the stranger's tag gone, the build runs again and makes the same image.
    assert build_image(small, demo_registry, settings).image_id == built.image_id


def test_a_fresh_runner_stacks_and_pushes_a_pack_image_from_pushed_model_images(
    pushed: tuple[ImageResult, str, dict[str, object], set[str]],
    image_registry: OciRegistry,
    small: ResolvedModel,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
    model_store: ModelStore,
) -> None:
    """The PackImage provider on a runner that has neither the member images nor their
    layer tars: it pulls the members by digest with the login, makes their layers again
    from their files (the same diff ids), stacks and pushes the pack; pulled back by its
    digest, the pack is the shared layers and each member's own layer."""
    built, digest_ref, _, _ = pushed
    settings = BuildSettings(store=model_store, registry=f"{image_registry.server}/fleet")
    other = by_name(demo_resolved, "match_probability_2_PHV_trafficunaware")
    other_built = build_image(other, demo_registry, settings)
    other_ref = docker_cli.push(other_built.image_ref, image_registry.login())
    own = []
    for image in (built, other_built):
        info = docker_cli.inspect(image.image_ref)
        assert info is not None
        own.append(info["RootFS"]["Layers"][-1])
        kept = kept_layer_path(info["RootFS"]["Layers"][-1])
        kept.unlink(missing_ok=True)  # as on a runner that did not build them
    forget(built.image_ref, digest_ref, other_built.image_ref, other_ref)
    auth = RegistryAuth(image_registry.server, image_registry.username, "placeholder")
    members = [
        PackMemberArgs(small, digest_ref, built.content_hash),
        PackMemberArgs(other, other_ref, other_built.content_hash),
    ]
    props = pack_image_inputs(PackImageArgs("pack-0", members, settings, push=True, auth=auth))
    props["registry_password"] = secret(image_registry.password)  # as on the wire
    outs = PackImageProvider().create(props).outs
    assert outs["built"] is True
    assert outs["image"].startswith(f"{image_registry.server}/fleet/pack-0@sha256:")
    forget(props["image_ref"], outs["image"])
    info = docker_cli.pull(outs["image"], image_registry.login())
    assert info["RootFS"]["Layers"][-2:] == own
    assert image_registry.password not in json.dumps(outs, default=str)
    # The same inputs again (a new stack, lost state): the registry has the tag.
    again = PackImageProvider().create(props).outs
    assert again["built"] is False and again["image"] == outs["image"]
