"""Engines: two ways to run the featurize and predict stages — in this process (``local``) or on Spark.

An engine is not a second pipeline: both call the same stage functions (:mod:`transferlab.features`, the heads,
:meth:`transferlab.Classifier.predict_images`), read and write the same feature cache and write the same
Parquet tables (:mod:`transferlab.engines._rows`); both follow one protocol (:class:`Engine`, :mod:`.base`). The
Spark engine imports pyspark only when it is used, so ``import transferlab`` and the local engine work without it.
"""

from __future__ import annotations

from typing import Any

from ..errors import TransferlabError
from ._rows import read_feature_table
from .base import Engine, TableSummary
from .local import LocalEngine

ENGINES = ("local", "spark")
DEFAULT_MASTER = "local[2]"

__all__ = [
    "DEFAULT_MASTER",
    "ENGINES",
    "Engine",
    "LocalEngine",
    "TableSummary",
    "as_engine",
    "get_engine",
    "read_feature_table",
]


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


def as_engine(engine: Engine | str | None) -> Engine:
    """The engine a public function was given: an engine as it is, a name through :func:`get_engine`, and None
    (the documented default of :class:`~transferlab.Classifier` and :func:`~transferlab.train`) as the local engine.

    Everything below the public functions sees an :class:`Engine`; "no engine" is :class:`LocalEngine`.
    """
    if engine is None:
        return LocalEngine()
    if isinstance(engine, str):
        return get_engine(engine)  # type: ignore[no-any-return]
    if not isinstance(engine, Engine):
        raise TransferlabError(
            f"engine {engine!r}: pass an engine from transferlab.engines.get_engine('local' or 'spark')"
        )
    return engine
