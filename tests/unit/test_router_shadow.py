"""How the router compares a shadow's answers with the caller's (fleet.router.shadow)."""

from __future__ import annotations

import pytest

from fleet.router.shadow import differences


@pytest.mark.parametrize(
    ("primary", "shadow", "diffs", "mismatches"),
    [
        ([0.25, 0.5], [0.5, 0.5], [0.25, 0.0], 0),
        ([1, 2], [1.5, 2], [0.5, 0.0], 0),  # ints and floats are numbers alike
        ([[0.1, 0.9]], [[0.3, 0.7]], [pytest.approx(0.2), pytest.approx(0.2)], 0),
        (["yes", "no"], ["yes", "yes"], [0.0], 1),  # labels: equal or a mismatch
        ([True], [1], [], 1),  # a boolean is not the number 1
        ([0.1, 0.2, 0.3], [0.1], [], 3),  # another length: every prediction mismatches
        ([{"a": 1}], [{"a": 1}], [0.0], 0),
    ],
)
def test_differences(primary, shadow, diffs, mismatches) -> None:
    assert differences(primary, shadow) == (diffs, mismatches)
