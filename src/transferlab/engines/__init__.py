"""Engines: two ways to run the featurize and predict stages — in this process (``local``) or on Spark.

An engine is not a second pipeline: both call the same stage functions (:mod:`transferlab.features`, the heads,
:meth:`transferlab.Classifier.predict_images`), read and write the same feature cache and write the same
Parquet tables (:mod:`transferlab.engines._rows`). The Spark engine imports pyspark only when it is used, so
``import transferlab`` and the local engine work without it.
"""

from __future__ import annotations

from typing import Any

from ..errors import TransferlabError
from ._rows import read_feature_table
from .local import LocalEngine, TableSummary

ENGINES = ("local", "spark")
DEFAULT_MASTER = "local[2]"

__all__ = ["DEFAULT_MASTER", "ENGINES", "LocalEngine", "TableSummary", "get_engine", "read_feature_table"]


def get_engine(name: str = "local", master: str | None = None, **options: Any) -> Any:
    """The engine called ``name``.

    Parameters
    ----------
    name
        ``"local"`` or ``"spark"``.
    master
        Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``, ``k8s://...``); Spark only. Default:
        spark-submit's master when spark-submit started this process, else ``local[2]``.
    options
        Engine options, e.g. ``partitions`` for Spark.

    Returns
    -------
    LocalEngine or SparkEngine
    """
    if name == "local":
        if master is not None:
            raise TransferlabError(f"--master {master}: applies to --engine spark only")
        return LocalEngine()
    if name == "spark":
        from .spark import SparkEngine

        return SparkEngine(master, **options)
    raise TransferlabError(f"--engine {name}: choose one of: {', '.join(ENGINES)}")
