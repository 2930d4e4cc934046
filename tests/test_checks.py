"""checks.positive_int: the argument check every layer shares."""

import re

import pytest

from cookbook.checks import positive_int


@pytest.mark.parametrize("value", [1, 2, 10**12])
def test_positive_int_returns_the_value_itself(value):
    assert positive_int("n", value) is value


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, 2.5, "3", None])
def test_positive_int_names_the_argument_and_the_bad_value(value):
    with pytest.raises(ValueError, match=rf"^steps must be a positive int, got {re.escape(repr(value))}$"):
        positive_int("steps", value)
