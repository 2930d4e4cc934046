"""cookbook.deploy.service.validate at each limit: the boundary value is accepted, one step past it is refused with
a message naming the field, the value and the valid range (issue 30: no upper-limit or boundary case existed)."""

import math
import re

import pytest

from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy.service import InvalidRequest, ServiceConfig, validate


class WordTokenizer:
    """One id per whitespace-separated word: a token count the test can see by eye."""

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # the service adds none: the prompt is continued, not wrapped
        return [len(word) for word in text.split()]


CONFIG = ServiceConfig(max_prompt_tokens=4, max_tokens_limit=8, max_temperature=1.5)  # 1.5: exact in float32


def check(prompt="a bb ccc", max_tokens=1, temperature=0.0):
    return validate(pb.PredictRequest(prompt=prompt, max_tokens=max_tokens, temperature=temperature),
                    WordTokenizer(), CONFIG)


def test_boundaries_are_accepted():
    assert check("a bb ccc dddd") == [1, 2, 3, 4]  # exactly max_prompt_tokens
    assert check("  x  ") == [1]  # surrounding blanks are not an empty prompt
    assert check(max_tokens=1) == check(max_tokens=8) == [1, 2, 3]  # 1..max_tokens_limit, both ends
    assert check(temperature=0.0) == check(temperature=1.5) == [1, 2, 3]  # [0, max_temperature], both ends


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="a bb ccc dddd e"), "prompt has 5 tokens; the limit is 4"),
    (dict(prompt=""), "prompt is empty; send the text to continue"),
    (dict(prompt=" \n\t "), "prompt is empty; send the text to continue"),
    (dict(max_tokens=0), "max_tokens must be in 1..8, got 0"),
    (dict(max_tokens=9), "max_tokens must be in 1..8, got 9"),
    (dict(max_tokens=-1), "max_tokens must be in 1..8, got -1"),
    (dict(temperature=1.75), "temperature must be in [0, 1.5] (0: greedy), got 1.75"),
    (dict(temperature=-0.5), "temperature must be in [0, 1.5] (0: greedy), got -0.5"),
    (dict(temperature=math.inf), "temperature must be in [0, 1.5] (0: greedy), got inf"),
    (dict(temperature=math.nan), "temperature must be in [0, 1.5] (0: greedy), got nan"),
])
def test_out_of_range_is_refused_with_the_limit(kwargs, message):
    with pytest.raises(InvalidRequest, match=f"^{re.escape(message)}$"):
        check(**kwargs)


def test_the_default_limits():
    config = ServiceConfig()
    assert (config.max_prompt_tokens, config.max_tokens_limit, config.max_temperature) == (256, 64, 2.0)
    request = pb.PredictRequest(prompt="w " * 256, max_tokens=64, temperature=2.0)
    assert validate(request, WordTokenizer(), config) == [1] * 256
    with pytest.raises(InvalidRequest, match="^temperature must be in"):
        validate(pb.PredictRequest(prompt="w", max_tokens=64, temperature=2.5), WordTokenizer(), config)
