"""The Spark ETL gives exactly the pandas aggregates. Needs the `spark` extra (pyspark) and Java 17+."""

import shutil

import pandas as pd
import pytest

from cookbook import casestudy as cs

pytest.importorskip("pyspark", reason="the Spark ETL needs pyspark: pip install 'cookbook[spark]'")
if shutil.which("java") is None:
    pytest.skip("the Spark ETL needs a Java runtime (17+) on PATH", allow_module_level=True)

from cookbook.casestudy.spark import interaction_counts_spark, local_spark  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    with local_spark(cores=1) as session:
        yield session


def test_spark_aggregates_equal_pandas(cleaned, spark):
    events = cleaned.frame
    pd.testing.assert_frame_equal(interaction_counts_spark(events, spark=spark), cs.interaction_counts(events))
    views = ("view", "click", "purchase")
    pd.testing.assert_frame_equal(interaction_counts_spark(events, views, spark=spark),
                                  cs.interaction_counts(events, views))


def test_spark_bad_input(spark, cleaned):
    with pytest.raises(ValueError, match="actions must be a non-empty subset"):
        interaction_counts_spark(cleaned.frame, ("clicks",), spark=spark)
    with pytest.raises(ValueError, match=r"no column\(s\) \['action'\]"):
        interaction_counts_spark(cleaned.frame.drop(columns="action"), spark=spark)
