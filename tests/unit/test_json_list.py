"""``json_list`` writes what ``json.dumps`` writes, a slice at a time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.extras import json_list


@pytest.mark.parametrize("items", [[], [7], list(range(8192)), list(range(8193)),
                                   [{"id": i, "piece": "ö" if i % 2 else [0xC3]}
                                    for i in range(20_000)]])
def test_the_slices_join_into_the_same_value(items: list[Any]) -> None:
    text = json_list(items, step=8192)
    assert json.loads(text) == items
    assert "\\u" not in text  # written as UTF-8, like the rest of the reply


def test_a_slice_boundary_in_the_middle_of_the_list() -> None:
    assert json.loads(json_list(list(range(10)), step=3)) == list(range(10))
