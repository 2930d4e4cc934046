"""Slow tests here (a frozen rank waiting out its timeout, DeepSpeed's ~55 s first compile, accelerate launch) run
only when asked for: `pytest -m slow tests/scale`. `make test` keeps the scale set within its 3-minute budget."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest -m slow tests/scale")
    for item in items:
        if "slow" in item.keywords and HERE in Path(item.path).parents:
            item.add_marker(skip)
