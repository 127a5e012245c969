"""The dynamic providers driven the way the Pulumi engine drives them.

The engine starts `python -m pulumi.dynamic` (the `pulumi-resource-pulumi-python`
plugin) and calls it over its gRPC ResourceProvider service, with properties serialized
by Pulumi's own `rpc` module and the pickled provider in `__provider`. These tests start
that very process and call it the same way: check -> create -> diff (no change, no work)
-> update after a one-field change -> read -> delete, and a preview pass with unknowns.
In-memory calls with plain dicts cannot see what the wire does to the inputs (None keys
dropped, ints as floats, secrets wrapped, unknowns), so this is the evidence that the
providers work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import provider_pb2_grpc

from components.image import ModelImageArgs, ModelImageProvider, image_inputs
from components.pack_image import (
    PackImageArgs,
    PackImageProvider,
    PackMemberArgs,
    pack_image_inputs,
)
from components.profile import MemoryProfileArgs, MemoryProfileProvider, profile_inputs
from components.wire import plain, resolved_of, unknown
from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_image
from fleet.host.model_store import ModelStore
from fleet.resolved import ResolvedModel
from tests.graph.fleetgen import generated_fleet
from tests.support import (
    by_name,
    docker_problem,
    dynamic_provider,
    from_wire,
    secret,
    to_wire,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = secret("s3cret-token")
wire, back = to_wire, from_wire


def test_every_model_survives_the_wire() -> None:
    """None keys vanish and ints come back as floats; the providers read them back."""
    _, resolved = generated_fleet(40)
    for r in resolved:
        image = image_inputs(ModelImageArgs(resolved=r, build=BuildSettings(), tracking_uri="x"))
        profile = profile_inputs(MemoryProfileArgs(resolved=r, image="img", content_hash="h"))
        for props in (image, profile):
            arrived = back(wire(props))
            assert "alias" not in arrived["model"]["model"]  # the None-valued key is gone
            assert resolved_of(arrived) == r


def test_secrets_arrive_wrapped_and_are_read_plain() -> None:
    arrived = back(wire({"mlflow_token": SECRET, "nested": {"password": SECRET}}))
    assert rpc.is_rpc_secret(arrived["mlflow_token"])
    assert plain(arrived) == {
        "mlflow_token": "s3cret-token",
        "nested": {"password": "s3cret-token"},
    }


def test_an_unreadable_model_is_named() -> None:
    from fleet.errors import ConfigError

    with pytest.raises(ConfigError, match="model 'broken'"):
        resolved_of({"model": {"name": "broken", "version": "not a number"}})


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    logs = tmp_path_factory.mktemp("provider")
    with dynamic_provider(ROOT, logs / "provider.log") as stub:
        yield stub


URN = "urn:pulumi:test::model-fleet::pulumi-python:dynamic:Resource::x"


def with_provider(props: dict[str, Any], impl: Any) -> dict[str, Any]:
    return {**props, "__provider": serialize_provider(impl)}


def call_check(stub: Any, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
    answer = stub.Check(proto.CheckRequest(urn=URN, olds=wire(olds), news=wire(news)))
    assert list(answer.failures) == []
    return back(answer.inputs, keep_unknowns=True)


def call_diff(stub: Any, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> int:
    request = proto.DiffRequest(id=id_, urn=URN, olds=wire(olds), news=wire(news))
    return int(stub.Diff(request).changes)


def profile_props(policy: dict[str, Any] | None = None) -> dict[str, Any]:
    r = generated_fleet(4)[1][0]
    props = profile_inputs(MemoryProfileArgs(resolved=r, image="img@sha256:1", content_hash="h1"))
    if policy:
        props["memory"] = {**props["memory"], **policy}
    # What an earlier create stored: the measured numbers (state is what this test fakes;
    # the gRPC path, the provider process and the re-derivation are real).
    return with_provider(props, MemoryProfileProvider())


def test_the_profile_provider_over_grpc(provider: Any) -> None:
    news = profile_props()
    checked = call_check(provider, {}, news)
    assert checked["model"]["name"] == news["model"]["name"]
    state = {
        **checked,
        "request_mib": 100,
        "limit_mib": 200,
        "idle_mib": 80.0,
        "p95_mib": 90.0,
        "peak_mib": 120.0,
        "summary": "measured",
    }
    # The same inputs again: no change, so `up` does no work.
    assert call_diff(provider, "id", state, news) == proto.DiffResponse.DIFF_NONE
    # One field changed (the memory policy): an update that re-derives from the state.
    changed = profile_props({"request_margin_percent": 50})
    assert call_diff(provider, "id", state, changed) == proto.DiffResponse.DIFF_SOME
    update = provider.Update(
        proto.UpdateRequest(id="id", urn=URN, olds=wire(state), news=wire(changed))
    )
    outs = back(update.properties)
    assert outs["request_mib"] == 135  # ceil(90 * 1.5)
    assert outs["peak_mib"] == 120.0 and outs["summary"] == "measured"
    # Past the ceiling: the gate fails the update, naming the model.
    with pytest.raises(grpc.RpcError, match="failed the profile gate"):
        provider.Update(
            proto.UpdateRequest(
                id="id", urn=URN, olds=wire(state), news=wire(profile_props({"ceiling_mib": 100}))
            )
        )
    read = provider.Read(proto.ReadRequest(id="id", urn=URN, properties=wire(outs)))
    assert back(read.properties)["request_mib"] == 135
    provider.Delete(proto.DeleteRequest(id="id", urn=URN, properties=wire(outs)))


def test_a_preview_with_unknown_inputs(provider: Any) -> None:
    """In a preview the new image is not known yet: check and diff must still answer."""
    state = {**profile_props(), "request_mib": 100, "limit_mib": 200, "peak_mib": 120.0}
    news = {**profile_props(), "image": rpc.UNKNOWN, "content_hash": rpc.UNKNOWN}
    checked = call_check(provider, state, news)
    assert unknown(checked["image"]) and not unknown(checked["model"])
    assert call_diff(provider, "id", state, news) == proto.DiffResponse.DIFF_SOME
    r = generated_fleet(4)[1][1]
    image = with_provider(
        image_inputs(ModelImageArgs(resolved=r, build=BuildSettings(), tracking_uri="x")),
        ModelImageProvider(),
    )
    image_state = {**image, "image": "x@sha256:1", "digest": "sha256:1"}
    assert call_diff(provider, "id", image_state, image) == proto.DiffResponse.DIFF_NONE
    moved = {**image, "content_hash": rpc.UNKNOWN, "mlflow_token": SECRET}
    assert call_diff(provider, "id", image_state, moved) == proto.DiffResponse.DIFF_SOME


@pytest.fixture(scope="module")
def engine_provider(
    model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    """The provider process with a Docker engine behind it, its BentoML store the session's."""
    problem = docker_problem()
    if problem is not None:
        pytest.skip(problem)
    logs = tmp_path_factory.mktemp("engine-provider")
    with dynamic_provider(ROOT, logs / "provider.log", model_store.env()) as stub:
        yield stub


@pytest.mark.docker
@pytest.mark.slow
def test_create_then_no_work_through_the_engine_path(
    engine_provider: Any, demo_uri: str, demo_resolved: list[ResolvedModel]
) -> None:
    """create builds (or finds by tag) the image and profiles it; the same inputs again
    are no change; a policy change updates from the state; read; delete."""
    model = by_name(demo_resolved, "match_probability_1_TAXI_trafficaware")
    image_in = with_provider(
        image_inputs(
            ModelImageArgs(resolved=model, build=BuildSettings(), tracking_uri=demo_uri, push=False)
        ),
        ModelImageProvider(),
    )
    # The token arrives as a wrapped secret, as the engine sends it.
    image_in["mlflow_token"] = SECRET
    checked = call_check(engine_provider, {}, image_in)
    made = engine_provider.Create(proto.CreateRequest(urn=URN, properties=wire(checked)))
    image_out = back(made.properties)
    assert made.id == image_in["image_ref"]
    assert image_out["image"] == image_in["image_ref"]  # no push: deployed by tag
    assert "mlflow_token" not in image_out  # a secret input is not kept in the outputs
    assert docker_cli.inspect(image_out["image"]) is not None
    assert call_diff(engine_provider, made.id, image_out, image_in) == proto.DiffResponse.DIFF_NONE

    profile_in = with_provider(
        profile_inputs(
            MemoryProfileArgs(
                resolved=model,
                image=image_out["image"],
                content_hash=image_out["content_hash"],
                requests=20,
            )
        ),
        MemoryProfileProvider(),
    )
    made = engine_provider.Create(proto.CreateRequest(urn=URN, properties=wire(profile_in)))
    measured = back(made.properties)
    assert 0 < measured["p95_mib"] <= measured["peak_mib"] < 4096
    assert measured["limit_mib"] >= measured["request_mib"] > measured["p95_mib"]
    assert call_diff(engine_provider, made.id, measured, profile_in) == proto.DiffResponse.DIFF_NONE
    looser = {**profile_in, "memory": {**profile_in["memory"], "limit_factor": 3.0}}
    update = engine_provider.Update(
        proto.UpdateRequest(id=made.id, urn=URN, olds=wire(measured), news=wire(looser))
    )
    updated = back(update.properties)
    assert updated["peak_mib"] == measured["peak_mib"]  # re-derived, not measured again
    assert updated["limit_mib"] >= math.ceil(measured["peak_mib"] * 3.0)
    read = engine_provider.Read(proto.ReadRequest(id=made.id, urn=URN, properties=wire(updated)))
    assert back(read.properties)["limit_mib"] == updated["limit_mib"]
    engine_provider.Delete(proto.DeleteRequest(id=made.id, urn=URN, properties=wire(updated)))


def pack_props(members: list[tuple[ResolvedModel, Any]], push: bool = True) -> dict[str, Any]:
    args = PackImageArgs(
        pack="pack-0",
        members=[PackMemberArgs(r, image, f"hash-{r.name}") for r, image in members],
        build=BuildSettings(),
        push=push,
    )
    return with_provider(pack_image_inputs(args), PackImageProvider())


def test_the_pack_image_provider_in_a_preview(provider: Any) -> None:
    """In a preview the members' images are unknown; the pack's hash is known (it is over
    the members' content hashes), so an unchanged pack is no change and a new member's
    version is one."""
    models = generated_fleet(4)[1]
    state = {**pack_props([(r, f"x@sha256:{i}") for i, r in enumerate(models)])}
    state.update(image="pack@sha256:9", digest="sha256:9", built=True)
    news = pack_props([(r, rpc.UNKNOWN) for r in models])
    checked = call_check(provider, state, news)
    assert unknown(checked["members"][0]["image"])
    assert call_diff(provider, "id", state, news) == proto.DiffResponse.DIFF_NONE
    moved = pack_props([(r, rpc.UNKNOWN) for r in models])
    moved["members"][2]["content_hash"] = "another"
    moved["content_hash"] = pack_image_inputs(
        PackImageArgs(
            "pack-0",
            [
                PackMemberArgs(r, "", "another" if i == 2 else f"hash-{r.name}")
                for i, r in enumerate(models)
            ],
            BuildSettings(),
        )
    )["content_hash"]
    assert call_diff(provider, "id", state, moved) == proto.DiffResponse.DIFF_SOME


@pytest.mark.docker
@pytest.mark.slow
def test_a_pack_image_and_a_pack_profile_through_the_engine_path(
    engine_provider: Any,
    demo_registry: Any,
    demo_resolved: list[ResolvedModel],
    model_store: ModelStore,
) -> None:
    """create stacks the pack image from two model images (the inputs as the engine sends
    them); the same inputs again are no change; a packed model's profile measures what
    it adds to a pack."""
    settings = BuildSettings(store=model_store)
    models = [
        by_name(demo_resolved, n)
        for n in ("match_probability_1_TAXI_trafficaware", "match_probability_2_PHV_trafficunaware")
    ]
    built = [build_image(r, demo_registry, settings) for r in models]
    args = PackImageArgs(
        pack="pack-0",
        members=[
            PackMemberArgs(r, b.image_ref, b.content_hash)
            for r, b in zip(models, built, strict=True)
        ],
        build=BuildSettings(),
        push=False,
    )
    pack_in = with_provider(pack_image_inputs(args), PackImageProvider())
    checked = call_check(engine_provider, {}, pack_in)
    made = engine_provider.Create(proto.CreateRequest(urn=URN, properties=wire(checked)))
    pack_out = back(made.properties)
    assert pack_out["image"] == pack_in["image_ref"]
    info = docker_cli.inspect(pack_out["image"])
    assert info is not None
    own = [docker_cli.inspect(b.image_ref)["RootFS"]["Layers"][-1] for b in built]  # type: ignore[index]
    assert info["RootFS"]["Layers"][-2:] == own
    assert call_diff(engine_provider, made.id, pack_out, pack_in) == proto.DiffResponse.DIFF_NONE

    profile_in = with_provider(
        profile_inputs(
            MemoryProfileArgs(
                resolved=models[0],
                image=built[0].image_ref,
                content_hash=built[0].content_hash,
                requests=20,
                pack=True,
            )
        ),
        MemoryProfileProvider(),
    )
    made = engine_provider.Create(proto.CreateRequest(urn=URN, properties=wire(profile_in)))
    measured = back(made.properties)
    assert 0 <= measured["marginal_p95_mib"] < 30
    assert 0 < measured["baseline_p95_mib"] <= measured["p95_mib"]
    assert call_diff(engine_provider, made.id, measured, profile_in) == proto.DiffResponse.DIFF_NONE
