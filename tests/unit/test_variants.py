"""A/B variant choice: stickiness, movement when weights change, distribution."""

from __future__ import annotations

import hashlib
import random

import pytest

from fleet.router.variants import BUCKETS, Split, sticky_point

PATH = "/probability/2/TAXI"
KEYS = [f"caller-{i}" for i in range(20_000)]


def test_sticky_point_is_stable_and_not_pythons_hash() -> None:
    # A fixed expectation: the same key maps to the same point in every process and
    # on every machine (Python's hash() is salted per process).
    digest = hashlib.sha256(f"{PATH}\x00caller-1".encode()).digest()
    assert sticky_point(PATH, "caller-1") == int.from_bytes(digest[:8], "big") % BUCKETS
    assert all(0 <= sticky_point(PATH, k) < BUCKETS for k in KEYS[:1000])


def test_same_key_same_variant_across_router_instances() -> None:
    # Two Split objects stand for two router replicas (or a restart).
    first, second = Split.of([("a", 50), ("b", 50)]), Split.of([("a", 50), ("b", 50)])
    rng1, rng2 = random.Random(1), random.Random(2)
    for key in KEYS[:2000]:
        chosen = first.choose(PATH, key, rng1)
        assert second.choose(PATH, key, rng2) == chosen
        assert first.choose(PATH, key, rng2) == chosen


def test_experiment_path_is_part_of_the_hash() -> None:
    split = Split.of([("a", 50), ("b", 50)])
    rng = random.Random(0)
    same = sum(split.choose(PATH, k, rng) == split.choose("/other", k, rng) for k in KEYS[:4000])
    assert 1700 < same < 2300  # independent: about half agree


def test_weight_change_moves_only_the_share_that_changes() -> None:
    before, after = Split.of([("a", 50), ("b", 50)]), Split.of([("a", 60), ("b", 40)])
    rng = random.Random(0)
    moved = [k for k in KEYS if before.choose(PATH, k, rng) != after.choose(PATH, k, rng)]
    share = len(moved) / len(KEYS)
    assert 0.09 < share < 0.11
    # Only b→a moves: no caller of a is sent to b by giving a more traffic.
    assert all(before.choose(PATH, k, rng) == "b" for k in moved)


def test_three_variants_weight_shift_between_neighbours() -> None:
    before = Split.of([("a", 20), ("b", 30), ("c", 50)])
    after = Split.of([("a", 20), ("b", 40), ("c", 40)])
    rng = random.Random(0)
    moved = sum(before.choose(PATH, k, rng) != after.choose(PATH, k, rng) for k in KEYS)
    assert 0.09 < moved / len(KEYS) < 0.11


@pytest.mark.parametrize("weights", [(50, 50), (90, 10), (1, 99), (20, 30, 50)])
def test_sticky_distribution_follows_weights(weights: tuple[int, ...]) -> None:
    split = Split.of([(f"m{i}", w) for i, w in enumerate(weights)])
    rng = random.Random(0)
    counts = {m: 0 for m in split.models}
    for key in KEYS:
        counts[split.choose(PATH, key, rng)] += 1
    for model, weight in zip(split.models, weights, strict=True):
        expected = len(KEYS) * weight / 100
        # 5 standard deviations of a binomial: fails only if the split is wrong.
        sd = (len(KEYS) * weight / 100 * (1 - weight / 100)) ** 0.5
        assert abs(counts[model] - expected) < 5 * sd + 1, (model, counts)


def test_without_key_the_choice_is_random_by_weight() -> None:
    split = Split.of([("a", 70), ("b", 30)])
    rng = random.Random(42)
    picks = [split.choose(PATH, None, rng) for _ in range(20_000)]
    share = picks.count("a") / len(picks)
    assert 0.68 < share < 0.72
    # An empty header value is no key either.
    assert {split.choose(PATH, "", rng) for _ in range(200)} == {"a", "b"}


def test_zero_weight_variant_is_never_chosen() -> None:
    split = Split.of([("a", 0), ("b", 100), ("c", 0)])
    rng = random.Random(0)
    assert {split.choose(PATH, k, rng) for k in KEYS[:3000]} == {"b"}
    assert {split.at(p) for p in (0, 1, BUCKETS - 1)} == {"b"}


def test_boundaries_of_ranges() -> None:
    split = Split.of([("a", 25), ("b", 75)])
    assert split.at(0) == "a"
    assert split.at(2499) == "a"
    assert split.at(2500) == "b"
    assert split.at(BUCKETS - 1) == "b"


@pytest.mark.parametrize("weights", [[("a", 50), ("b", 40)], [("a", 110), ("b", -10)]])
def test_bad_weights_are_refused(weights: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError, match=r"sum to 100|non-negative"):
        Split.of(weights)
