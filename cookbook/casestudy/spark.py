"""The ETL of the case study on PySpark in local mode: the same aggregation as `etl.interaction_counts`.

    with local_spark() as spark:
        counts = interaction_counts_spark(past, spark=spark)    # equals interaction_counts(past), row for row

Spark is what people reach for when logs outgrow one machine; in local mode it runs the same plan on this one, so
the pandas and Spark results can be compared exactly. PySpark is the optional `spark` extra and needs a Java
runtime (17 or newer). Rows go in and out as plain Python tuples rather than through `toPandas`/Arrow: PySpark 4.x
checks the pandas version on that path and warns about pandas 3, which it does not list as supported yet; tuples
take that path out of the comparison (and are fast enough for a demonstration). The warning itself is still
raised once, when the session starts (an import inside PySpark checks the version eagerly); `local_spark` filters
exactly that message, since nothing here goes through pandas on the Spark side.
"""

from __future__ import annotations

import contextlib
import warnings

import pandas as pd

from cookbook.casestudy.etl import COUNTED, _check_actions, _need
from cookbook.checks import positive_int

__all__ = ["interaction_counts_spark", "local_spark", "require_pyspark"]


def require_pyspark():
    """The pyspark package, imported on first use (the optional `spark` extra), or a clear ImportError."""
    try:  # function-level: pyspark is a large optional extra (pip install 'cookbook[spark]'), with a JVM behind it
        import pyspark
        import pyspark.sql  # noqa: F401
    except ImportError as exc:
        raise ImportError("the Spark ETL needs pyspark and Java 17+: pip install 'cookbook[spark]' "
                          "(or pyspark>=4.0)") from exc
    return pyspark


@contextlib.contextmanager
def local_spark(cores: int = 1, app: str = "cookbook-casestudy"):
    """A local-mode SparkSession on `cores` cores (no web UI, few shuffle partitions, errors-only logging),
    stopped on exit. Shown in notebooks/14 §2."""
    positive_int("cores", cores)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        pyspark = require_pyspark()
        spark = (pyspark.sql.SparkSession.builder.master(f"local[{cores}]").appName(app)
                 .config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")  # no [Stage 0:> ...] bars in a notebook
                 .config("spark.sql.shuffle.partitions", str(max(2, 2 * cores)))  # the default 200 is for clusters
                 .config("spark.driver.memory", "1g")
                 .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


def interaction_counts_spark(events: pd.DataFrame, actions=COUNTED, *, spark) -> pd.DataFrame:
    """`etl.interaction_counts` on Spark: filter by action, group by (user, item), count each action (one
    conditional sum per action), as the same pandas frame (columns, dtypes and order). Shown in notebooks/14 §2."""
    actions = _check_actions(actions)
    _need(events, ["user_id", "item_id", "action"])
    from pyspark.sql import functions as F  # the optional extra, imported with the session already running
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType([StructField("user_id", LongType(), False), StructField("item_id", LongType(), False),
                         StructField("action", StringType(), False)])
    rows = list(zip(events["user_id"].astype("int64").tolist(), events["item_id"].astype("int64").tolist(),
                    events["action"].astype(str).tolist(), strict=True))
    frame = spark.createDataFrame(rows, schema)
    counted = (frame.filter(F.col("action").isin(list(actions)))
               .groupBy("user_id", "item_id")
               .agg(*[F.sum(F.when(F.col("action") == a, 1).otherwise(0)).cast("long").alias(a) for a in actions])
               .orderBy("user_id", "item_id"))
    out = pd.DataFrame([tuple(r) for r in counted.collect()], columns=["user_id", "item_id", *actions])
    out = out.astype({c: "int64" for c in out.columns})
    out["interactions"] = out[list(actions)].sum(axis=1).astype("int64")
    return out
