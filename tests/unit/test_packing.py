"""Placement of packed models into packs (`fleet.packing`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.packing import (
    PackSize,
    Placement,
    PlacementError,
    PlacementFile,
    pack_memory,
    place,
    read_placement,
    sizes_for,
    write_placement,
)
from fleet.spec import MemoryPolicy, Packing

POLICY = MemoryPolicy()
SMALL = PackSize(180.0, 190.0, 2.0, 3.0, content_hash="abc")


def size(marginal: float, baseline: float = 180.0) -> PackSize:
    return PackSize(baseline, baseline + 10, marginal, marginal + 1, content_hash="h")


def fits(sizes: dict[str, PackSize], placement: Placement, packing: Packing) -> bool:
    return all(
        len(ms) <= packing.max_models
        and pack_memory([sizes[m] for m in ms], POLICY, packing.min_marginal_mib).limit_mib
        <= packing.memory_budget_mib
        for ms in placement.packs.values()
    )


def test_pack_memory_is_the_largest_baseline_plus_every_marginal():
    mem = pack_memory([size(2.0), size(10.0, baseline=200.0)], POLICY)
    assert mem.p95_mib == 212.0  # 200 + 2 + 10
    assert mem.peak_mib == 210.0 + 3.0 + 11.0
    # The policy of a model alone: request = p95 + 15 %, limit = max(1.5 x peak, peak + 64).
    assert mem.request_mib == 244
    assert mem.limit_mib == 336


def test_a_marginal_below_the_floor_counts_as_the_floor():
    tiny = [size(0.0), size(0.3), size(5.0)]
    mem = pack_memory(tiny, POLICY, min_marginal_mib=2.0)
    assert mem.p95_mib == 180.0 + 2.0 + 2.0 + 5.0
    assert pack_memory(tiny, POLICY).p95_mib == 180.0 + 0.3 + 5.0


def test_first_fit_decreasing_fills_packs_within_the_budget_and_the_count():
    packing = Packing(enabled=True, memory_budget_mib=512, max_models=40)
    sizes = {f"m{i:03d}": size(1.0 + i % 7) for i in range(150)}
    placement = place(sizes, Placement(), packing, POLICY)
    assert sorted(placement.pack_of()) == sorted(sizes)
    assert fits(sizes, placement, packing)
    assert list(placement.packs) == [f"pack-{i}" for i in range(len(placement.packs))]
    # Not one pack per model: 150 small models share a handful.
    assert len(placement.packs) <= 8


def test_adding_removing_or_resizing_one_model_moves_no_other():
    packing = Packing(enabled=True, memory_budget_mib=400, max_models=30)
    sizes = {f"m{i:03d}": size(2.0 + (i * 37) % 11) for i in range(60)}
    before = place(sizes, Placement(), packing, POLICY)

    added = place({**sizes, "new": size(5.0)}, before, packing, POLICY)
    assert added.moved(before) == {"new": (None, added.pack_of()["new"])}

    gone = dict(sizes)
    del gone["m007"]
    removed = place(gone, before, packing, POLICY)
    assert removed.moved(before) == {"m007": (before.pack_of()["m007"], None)}

    # A new version that measures a little more stays put while its pack still fits.
    grown = place({**sizes, "m010": size(3.0)}, before, packing, POLICY)
    assert grown.moved(before) == {}


def test_a_pack_over_its_budget_moves_only_what_it_must():
    packing = Packing(enabled=True, memory_budget_mib=400, max_models=100)
    sizes = {f"m{i:02d}": size(4.0) for i in range(40)}
    before = place(sizes, Placement(), packing, POLICY)
    pack = before.pack_of()["m03"]
    # m03's new version measures far more: its pack no longer fits; m03 leaves, no other.
    after = place({**sizes, "m03": size(60.0)}, before, packing, POLICY)
    assert set(after.moved(before)) == {"m03"}
    assert after.pack_of()["m03"] != pack
    assert fits({**sizes, "m03": size(60.0)}, after, packing)


def test_a_model_too_big_for_any_pack_is_named():
    packing = Packing(enabled=True, memory_budget_mib=256)
    with pytest.raises(PlacementError, match=r"model 'huge'.*over packing\.memory_budget_mib"):
        place({"small": size(2.0), "huge": size(200.0)}, Placement(), packing, POLICY)


def test_new_packs_skip_names_that_dedicated_models_hold():
    packing = Packing(enabled=True, memory_budget_mib=300, max_models=1)
    placement = place({"a": SMALL, "b": SMALL}, Placement(), packing, POLICY, ["pack-0"])
    assert set(placement.packs) == {"pack-1", "pack-2"}


def test_unmeasured_models_get_the_largest_measured_size():
    known = {"a": size(2.0), "b": size(9.0, baseline=210.0)}
    got = sizes_for(["a", "c"], known)
    assert got["a"] == known["a"]
    assert not got["c"].measured
    assert (got["c"].marginal_p95_mib, got["c"].baseline_p95_mib) == (9.0, 210.0)


def test_the_placement_file_round_trips(tmp_path):
    sizes = {"a": SMALL, "b": size(4.0)}
    placement = place(sizes, Placement(), Packing(enabled=True), POLICY)
    path = tmp_path / "placement.yaml"
    write_placement(path, PlacementFile(placement, sizes))
    again = read_placement(path)
    assert again.placement == placement
    assert again.sizes == sizes
    assert path.read_text().startswith("# Written by `fleet place`")
    assert read_placement(tmp_path / "absent.yaml") == PlacementFile()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("packs: []", "expected a mapping"),
        ("packs: {box: {a: {}}}", "a pack is named pack-<number>"),
        ("packs: {pack-0: {a: {baseline_p95_mib: 1}}}", "missing 'baseline_peak_mib'"),
        (
            "packs: {pack-0: {a: {baseline_p95_mib: 1, baseline_peak_mib: 1, "
            "marginal_p95_mib: -1, marginal_peak_mib: 1}}}",
            "marginal_p95_mib must be a number of MiB",
        ),
        (
            "packs: {pack-0: {a: {baseline_p95_mib: 1, baseline_peak_mib: 1, "
            "marginal_p95_mib: 1, marginal_peak_mib: 1, colour: red}}}",
            "unknown key 'colour'",
        ),
    ],
)
def test_a_bad_placement_file_is_named(tmp_path, text, problem):
    path = tmp_path / "placement.yaml"
    path.write_text(text)
    with pytest.raises(PlacementError, match=problem):
        read_placement(path)


marginals = st.floats(min_value=0.5, max_value=40.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    first=st.dictionaries(st.sampled_from([f"m{i}" for i in range(80)]), marginals, min_size=1),
    change=st.dictionaries(st.sampled_from([f"m{i}" for i in range(80)]), marginals),
    removed=st.sets(st.sampled_from([f"m{i}" for i in range(80)])),
    budget=st.integers(min_value=400, max_value=1500),
    max_models=st.integers(min_value=1, max_value=50),
)
def test_placement_always_fits_and_keeps_unchanged_models_in_packs_that_fit(
    first, change, removed, budget, max_models
):
    packing = Packing(enabled=True, memory_budget_mib=budget, max_models=max_models)
    sizes1 = {m: size(v) for m, v in first.items()}
    before = place(sizes1, Placement(), packing, POLICY)
    assert fits(sizes1, before, packing)
    sizes2 = {m: s for m, s in {**sizes1, **{m: size(v) for m, v in change.items()}}.items()}
    sizes2 = {m: s for m, s in sizes2.items() if m not in removed} or {"m0": size(1.0)}
    after = place(sizes2, before, packing, POLICY)
    assert sorted(after.pack_of()) == sorted(sizes2)
    assert fits(sizes2, after, packing)
    # A model whose size did not change moves only when its old pack, with the models
    # that stay, went over its budget.
    old = before.pack_of()
    for model, (was, now) in after.moved(before).items():
        if was is None or now is None or model in change:
            continue
        stay = [m for m in before.packs[was] if m in sizes2]
        assert not fits(sizes2, Placement({was: tuple(stay)}), packing), (model, old[model])
