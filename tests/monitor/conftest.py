"""Monitor tests: alerts are asserted on, not printed."""

import warnings

import pytest

from cookbook.monitor import TrainingAlertWarning


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingAlertWarning)
        yield
