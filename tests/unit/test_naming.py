"""fleet.naming: Kubernetes names derived from model names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.naming import MAX_LABEL, k8s_name, short_hash

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Model names as they come: registry names of any case, digits, separators, any length.
model_names = st.text(min_size=1, max_size=200)
# No deadline: CI machines are shared and slow; correctness is what these check.
_quick = settings(deadline=None, max_examples=60)
field_names = st.from_regex(r"[A-Za-z0-9_.\- ]{1,120}", fullmatch=True)


def test_field_name_becomes_a_readable_label() -> None:
    name = k8s_name("match_probability_153_TAXI_trafficaware")
    assert name == "match-probability-153-taxi-trafficaware-" + short_hash(
        "match_probability_153_TAXI_trafficaware"
    )
    assert DNS_1035.match(name)


def test_names_differing_only_in_case_differ() -> None:
    upper, lower = k8s_name("match_probability_1_TAXI_x"), k8s_name("match_probability_1_taxi_x")
    assert upper != lower
    assert upper.rsplit("-", 1)[0] == lower.rsplit("-", 1)[0]  # same slug, different hash


def test_long_names_differing_only_after_the_cut_differ() -> None:
    stem = "match_probability_" + "x" * 80
    a, b = k8s_name(stem + "_TAXI"), k8s_name(stem + "_PHV")
    assert a != b
    assert len(a) == len(b) == MAX_LABEL
    assert DNS_1035.match(a) and DNS_1035.match(b)


@pytest.mark.parametrize(
    ("name", "slug"),
    [("153_TAXI", "m-153-taxi"), ("9", "m-9"), ("_", "m"), ("---", "m"), ("_2_x", "m-2-x")],
)
def test_names_not_starting_with_a_letter_get_a_letter(name: str, slug: str) -> None:
    assert k8s_name(name) == f"{slug}-{short_hash(name)}"


def test_shorter_maximum_is_respected() -> None:
    label = k8s_name("match_probability_153_TAXI_trafficaware", max_length=20)
    assert len(label) <= 20
    assert DNS_1035.match(label)


def test_a_maximum_too_short_for_the_hash_is_refused() -> None:
    with pytest.raises(ValueError, match="max_length"):
        k8s_name("abc", max_length=7)
    assert DNS_1035.match(k8s_name("abc", max_length=8))


@_quick
@given(model_names)
def test_any_name_gives_a_dns_1035_label_of_at_most_63(name: str) -> None:
    label = k8s_name(name)
    assert DNS_1035.match(label), label
    assert len(label) <= MAX_LABEL


def test_stable_across_releases() -> None:
    # Deployed resources are named by this: a change here would replace every model's pods.
    assert k8s_name("match_probability_153_TAXI_trafficaware") == (
        "match-probability-153-taxi-trafficaware-0a37fe"
    )
    assert k8s_name("match_probability_" + "x" * 80 + "_TAXI") == (
        "match-probability-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-576f06"
    )


@_quick
@given(model_names)
def test_stable(name: str) -> None:
    assert k8s_name(name) == k8s_name("".join(name))


@_quick
@given(field_names, field_names)
def test_distinct_names_get_distinct_labels(a: str, b: str) -> None:
    # The hash of the full original name makes collisions as rare as a 24-bit collision.
    if a != b:
        assert k8s_name(a) != k8s_name(b)


@_quick
@given(field_names)
def test_case_variants_get_distinct_labels(name: str) -> None:
    if name.swapcase() != name:
        assert k8s_name(name) != k8s_name(name.swapcase())
