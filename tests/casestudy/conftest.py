import pytest

from cookbook import casestudy as cs


@pytest.fixture(scope="package")
def logs():
    return cs.interaction_logs(200, 60, 14, seed=3, categories=6, future_days=4, sessions_per_day=0.3,
                               bot_share=0.02, bot_events=100)


@pytest.fixture(scope="package")
def cleaned(logs):
    return cs.clean_logs(logs.raw, 60)
