"""A real pack image: two model images stacked, run, asked; one version change, one layer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest

from fleet.host import docker_cli
from fleet.host.images import PORT, BuildSettings, ImageResult, build_image, kept_layer_path
from fleet.host.model_server import pack_path
from fleet.host.model_store import ModelStore
from fleet.host.pack_images import Member, build_pack_image, pack_hash, pack_ref
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from tests.support import by_name, container, container_ready, docker_problem

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODELS = ("match_probability_1_TAXI_trafficaware", "match_probability_2_PHV_trafficunaware")
PACK = "pack-test"


@pytest.fixture(scope="module")
def members_resolved(demo_resolved: list[ResolvedModel]) -> list[ResolvedModel]:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    return [by_name(demo_resolved, m) for m in MODELS]


@pytest.fixture(scope="module")
def settings(model_store: ModelStore) -> BuildSettings:
    return BuildSettings(store=model_store)


@pytest.fixture(scope="module")
def model_images(
    members_resolved: list[ResolvedModel], demo_registry: Registry, settings: BuildSettings
) -> list[ImageResult]:
    return [build_image(r, demo_registry, settings) for r in members_resolved]


def members(resolved: list[ResolvedModel], images: list[ImageResult]) -> list[Member]:
    return [Member(r, i.image_ref, i.content_hash) for r, i in zip(resolved, images, strict=True)]


@pytest.fixture(scope="module")
def pack(
    members_resolved: list[ResolvedModel], model_images: list[ImageResult], settings: BuildSettings
) -> ImageResult:
    ms = members(members_resolved, model_images)
    chash = pack_hash(PACK, [(m.resolved.name, m.content_hash) for m in ms])
    return build_pack_image(PACK, ms, settings, pack_ref(settings.registry, PACK, chash))


@pytest.fixture(scope="module")
def running(pack: ImageResult) -> Iterator[str]:
    with container("-p", f"127.0.0.1::{PORT}", pack.image_ref) as cid:
        port = docker_cli.check("port", cid, f"{PORT}/tcp").split(":")[-1].strip()
        url = f"http://127.0.0.1:{port}"
        container_ready(cid, url, timeout_s=240)
        yield url


def layers(ref: str) -> list[str]:
    info = docker_cli.inspect(ref)
    assert info is not None
    return list(info["RootFS"]["Layers"])


def test_the_pack_image_is_the_shared_layers_and_each_models_own_layer(
    pack: ImageResult, model_images: list[ImageResult]
) -> None:
    own = [layers(i.image_ref) for i in model_images]
    assert layers(pack.image_ref) == [*own[0][:-1], *(o[-1] for o in own)]
    assert pack.built is True


def test_every_model_of_the_pack_answers_like_its_pyfunc_model(
    running: str,
    members_resolved: list[ResolvedModel],
    model_store: ModelStore,
    demo_registry: Registry,
) -> None:
    for r in members_resolved:
        records = random_records(r.inputs, 32, seed=7)
        got = httpx.post(f"{running}{pack_path(r.name)}/predict", json={"records": records})
        assert got.status_code == 200, got.text
        model = mlflow.pyfunc.load_model(
            str(model_store.model_dir(model_store.import_model(r, demo_registry)) / "mlflow_model")
        )
        want = model.predict(pd.DataFrame(records))
        assert got.json() == pytest.approx(list(want), rel=1e-12)
        bad = httpx.post(f"{running}{pack_path(r.name)}/predict", json={"records": [{}]})
        assert bad.status_code == 400
    assert httpx.get(f"{running}/readyz").status_code == 200


def test_a_member_built_elsewhere_gives_the_same_pack_image(
    pack: ImageResult,
    members_resolved: list[ResolvedModel],
    model_images: list[ImageResult],
    settings: BuildSettings,
) -> None:
    """Without this host's kept layer tars (a fresh runner that pulled the model images),
    the layers made again from the images' files are the same bytes: the same image."""
    for image in model_images:
        kept = kept_layer_path(layers(image.image_ref)[-1])
        shutil.move(kept, kept.with_suffix(".moved"))
    try:
        ms = members(members_resolved, model_images)
        ref = pack.image_ref.replace(f"/{PACK}:", f"/{PACK}-again:")
        again = build_pack_image(f"{PACK}-again", ms, settings, ref)
    finally:
        for image in model_images:
            kept = kept_layer_path(layers(image.image_ref)[-1])
            shutil.move(kept.with_suffix(".moved"), kept)
    assert layers(again.image_ref) == layers(pack.image_ref)
    docker_cli.run("rmi", again.image_ref)


def test_a_new_version_of_one_model_changes_one_layer(
    pack: ImageResult,
    members_resolved: list[ResolvedModel],
    model_images: list[ImageResult],
    demo_registry: Registry,
    settings: BuildSettings,
) -> None:
    # The same model served with other batching settings is another image of it.
    first = members_resolved[0]
    batching = first.model.settings.batching.model_copy(update={"max_batch_size": 7})
    model = first.model.model_copy(
        update={"settings": first.model.settings.model_copy(update={"batching": batching})}
    )
    changed = replace(first, model=model)
    image = build_image(changed, demo_registry, settings)
    ms = members([changed, *members_resolved[1:]], [image, *model_images[1:]])
    chash = pack_hash(PACK, [(m.resolved.name, m.content_hash) for m in ms])
    assert chash not in pack.image_ref
    new = build_pack_image(PACK, ms, settings, pack_ref(settings.registry, PACK, chash))
    old_layers, new_layers = layers(pack.image_ref), layers(new.image_ref)
    assert len(old_layers) == len(new_layers)
    assert [i for i, (a, b) in enumerate(zip(old_layers, new_layers, strict=True)) if a != b] == [
        len(old_layers) - 2
    ]
