"""The Spark engine: featurize, train and batch predict on a Spark cluster.

Each stage runs the local stage function inside Spark: featurization through
:func:`pyspark.ml.functions.predict_batch_udf` (the backbone is built once per Python worker and calls
:func:`transferlab.engines._rows.feature_rows` per batch), prediction through ``mapInPandas`` with the saved
model's own :meth:`~transferlab.Classifier.predict_images`. So features and answers equal the local engine's,
and both engines read and write the same feature cache (on a cluster: a folder every worker can reach).

pyspark is imported only here, when the engine is used.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import default_cache_dir
from ..errors import TransferlabError
from ..features import Extractor, FeatureOptions, FeatureResult, open_cache, prepare_backbone
from . import _rows
from .base import TableSummary
from .local import LocalEngine

PIP_HINT = "pip install pyspark==4.3.0 pyarrow"

# Train: below this many feature values (rows × dimensions, float32: 800 MB) the training matrix is collected to
# the driver and the local heads fit it, giving exactly the local engine's model. Above it, logreg and mlp heads
# are fitted by Spark ML (LogisticRegression, MultilayerPerceptronClassifier) and converted to the same artifact.
COLLECT_LIMIT_FLOATS = 200_000_000

# glibc reads these only at process start; set before the session starts so executors and Python workers inherit
# them (see BENCHMARKS.md: the default allocator halves CNN throughput). Workers also call mallopt themselves.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}

_PREDICTION_DDL = (
    "path string, label string, probabilities map<string,double>, error string, box array<double>, face_score double"
)


def require_pyspark() -> None:
    """Fail with the install command when pyspark (or pyarrow) is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError:
        raise TransferlabError(f"--engine spark needs pyspark and pyarrow; install them with: {PIP_HINT}") from None


def _on_this_machine(master: str) -> bool:
    return master.startswith("local") or "://127.0.0.1" in master or "://localhost" in master


def spark_session(master: str | None = None, app_name: str = "transferlab") -> Any:
    """The active SparkSession (a notebook's, a test's), or a new one on ``master``.

    Without ``master``: the master spark-submit was given when spark-submit started this process, else
    ``local[2]``.

    On this machine the Python workers must run this interpreter (otherwise they start the system ``python3``,
    without transferlab) and Spark must bind to loopback; both are set as environment defaults, so the user's own
    ``PYSPARK_PYTHON`` / ``SPARK_LOCAL_IP`` win. On a cluster, install transferlab on every node and set
    ``PYSPARK_PYTHON`` there.
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # spark-submit starts the JVM first and passes its gateway; its --master and --conf then apply as given.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if master is None and not submitted:
        master = "local[2]"
    if master is None:
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        return spark
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _on_this_machine(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for k, v in ALLOCATOR_ENV.items():
        os.environ.setdefault(k, v)
    builder = SparkSession.builder.master(master).appName(app_name)
    for k, v in ALLOCATOR_ENV.items():
        builder = builder.config(f"spark.executorEnv.{k}", v)
    builder = (
        builder.config("spark.python.worker.reuse", "true")  # the backbone is built once per worker, then reused
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Feature rows are big (VGG16 with --pool flatten: 100 KB each): Spark's default Arrow batch of 10,000 rows
        # would be a gigabyte when tables are collected; 1,024 keeps batches under ~100 MB.
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1024")
    )
    if master.startswith("local"):
        builder = builder.config("spark.ui.enabled", "false")
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - JVM/launcher failures become one line naming the master
        raise TransferlabError(f"--master {master}: cannot start Spark ({type(exc).__name__}: {exc})") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


_SHIPPED: set[str] = set()


def _ship_transferlab(spark: Any) -> None:
    """Send the driver's transferlab source to every executor (``addPyFile``), once per SparkContext.

    Workers then run exactly the driver's version, also from a source checkout; its dependencies (torch, timm,
    OpenCV, the weights packages) must still be installed on every node.
    """
    import zipfile

    sc = spark.sparkContext
    if sc.applicationId in _SHIPPED:
        return
    pkg = Path(__file__).resolve().parents[1]
    fd, name = tempfile.mkstemp(prefix="transferlab-", suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(pkg.rglob("*.py")):
            zf.write(f, f.relative_to(pkg.parent).as_posix())
    sc.addPyFile(name)
    _SHIPPED.add(sc.applicationId)


@dataclass(frozen=True)
class _Job:
    """What a Python worker needs to rebuild the featurize stage (small and picklable): the driver's featurize
    options as a worker reads them (its own device, the driver's recipe, registered weights located by each worker
    and a user's --weights file passed on by path, the shared cache), and the weights' hash to check."""

    options: FeatureOptions
    weights_hash: str
    # A fine-tuned model's top-block tensors travel with the job (a few MB for mobilenet_v2's last two blocks).
    tuned: dict[str, np.ndarray] | None = field(default=None, hash=False, compare=False)

    @property
    def batch_size(self) -> int:
        """Images per ``predict_batch_udf`` call."""
        return int(self.options.batch_size or 32)


def _job(extractor: Extractor, batch_size: int) -> _Job:
    backbone, cache = extractor.backbone, extractor.cache
    located = backbone.cfg.weights.locate()
    registered = located is not None and Path(located) == Path(backbone.weights_file)
    fields = {k: getattr(extractor.options, k) for k in FeatureOptions.model_fields}
    options = FeatureOptions(
        **{
            **fields,
            "weights": None if registered else Path(backbone.weights_file),
            "cache_dir": Path(cache.root) if cache is not None else None,
            "use_cache": cache is not None,
            "batch_size": batch_size,
            "num_workers": 0,
            "device": "auto",  # each executor uses the device it has, with the driver's recipe
            "recipe": fields["recipe"] or backbone.recipe_name,
            "verbose": False,
        }
    )
    return _Job(options, backbone.weights_hash, getattr(backbone, "tuned", None))


def _single_threaded_worker() -> None:
    # Each Spark task is one core: two torch threads per worker on 2 cores made the job 3× slower (STACK.md).
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass


def _make_featurizer(job: _Job) -> Callable[[np.ndarray, np.ndarray], list[dict[str, Any]]]:
    """Built once per Python worker by ``predict_batch_udf``: the backbone, the cache, and the per-batch stage."""
    _single_threaded_worker()
    bb = prepare_backbone(job.options, tuned=job.tuned, expected_weights=job.weights_hash)
    pool = job.options.pool.value
    cache = open_cache(bb, pool, job.options.cache_dir, job.options.use_cache)
    empty = np.zeros(0, dtype=np.float32)

    def featurize_batch(paths: np.ndarray, hashes: np.ndarray) -> list[dict[str, Any]]:
        known = [h if isinstance(h, str) and h else None for h in hashes]
        rows = _rows.feature_rows(
            [str(p) for p in paths],
            bb,
            pool=pool,
            content_hashes=known,
            cache=cache,
            batch_size=job.batch_size,
            num_workers=0,
        )
        # predict_batch_udf wants scalars, never None: "" stands for null and is turned back into null in SQL.
        # The batch's counts ride on its first row, so summing the column over the job gives the totals.
        return [
            {
                "content_hash": rows.content_hashes[k] or "",
                "features": empty if rows.features[k] is None else np.asarray(rows.features[k], dtype=np.float32),
                "error": rows.errors[k] or "",
                "n_cached": rows.n_cached if k == 0 else 0,
                "n_computed": rows.n_computed if k == 0 else 0,
            }
            for k in range(len(paths))
        ]

    return featurize_batch


_WORKER_MODELS: dict[str, Any] = {}
_PREDICT_CHUNK = 256  # images per predict_images call in a worker: bounded memory, output streams as it goes


def _worker_classifier(cls: type, key: str, files: dict[str, bytes], options: dict[str, Any]) -> Any:
    """The saved model, loaded once per Python worker from the bytes the driver shipped (``cls``: the driver's
    classifier class, whose ``load`` rebuilds it)."""
    if key not in _WORKER_MODELS:
        _single_threaded_worker()
        d = Path(tempfile.mkdtemp(prefix="transferlab-model-"))
        for name, data in files.items():
            (d / name).write_bytes(data)
        _WORKER_MODELS[key] = cls.load(d, **options)  # type: ignore[attr-defined]
    return _WORKER_MODELS[key]


def _predict_partition(
    batches: Iterator[Any], cls: type, key: str, files: dict[str, bytes], options: dict[str, Any]
) -> Any:
    clf = _worker_classifier(cls, key, files, options)
    for pdf in batches:
        paths = pdf["path"].astype(str).tolist()
        for start in range(0, len(paths), _PREDICT_CHUNK):
            yield _rows.prediction_frame(clf.predict_images(paths[start : start + _PREDICT_CHUNK]))


class SparkEngine:
    """Run the featurize and predict stages on Spark.

    Parameters
    ----------
    master
        Spark master URL: ``local[N]``, ``spark://host:7077``, ``yarn``, ``k8s://https://...``; None: spark-submit's
        master when run by spark-submit, else ``local[2]``. An already active SparkSession (a notebook's) is used
        as it is.
    partitions
        Partitions of the image list (default: the cluster's default parallelism, one per core: more left the
        last task running alone on small clusters).
    batch_size
        Images per ``predict_batch_udf`` call (and per forward pass).
    collect_limit
        Train-time rule: feature values (rows × dimensions) below which the local heads fit collected features.
    """

    name = "spark"

    def __init__(
        self,
        master: str | None = None,
        *,
        partitions: int | None = None,
        batch_size: int | None = None,
        collect_limit: float = COLLECT_LIMIT_FLOATS,
    ) -> None:
        require_pyspark()
        if partitions is not None and partitions < 1:
            raise TransferlabError(f"partitions {partitions}: must be at least 1")
        self.master = master
        self.partitions = partitions
        self.batch_size = batch_size
        self.collect_limit = collect_limit
        self._spark: Any = None
        self._udfs: dict[_Job, Any] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> SparkEngine:
        # An engine is a shared service (one SparkSession), not a parameter value: scikit-learn's clone() of a
        # Classifier that uses it deep-copies parameters, and must get this same engine back.
        return self

    @property
    def spark(self) -> Any:
        """The SparkSession (started on first use), with this transferlab shipped to its workers."""
        if self._spark is None:
            self._spark = spark_session(self.master)
            _ship_transferlab(self._spark)
        return self._spark

    def _frame(self, paths: Sequence[str], hashes: Sequence[str | None], labels: Sequence[str | None]) -> Any:
        n = len(paths)
        parts = max(1, min(n, self.partitions or self.spark.sparkContext.defaultParallelism))
        data = [(i, str(p), h, lab) for i, (p, h, lab) in enumerate(zip(paths, hashes, labels, strict=True))]
        rdd = self.spark.sparkContext.parallelize(data, parts)
        return self.spark.createDataFrame(rdd, "idx long, path string, content_hash string, label string")

    def _featurized(self, frame: Any, job: _Job) -> Any:
        from pyspark.ml.functions import predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        result = T.StructType(
            [
                T.StructField("content_hash", T.StringType()),
                T.StructField("features", T.ArrayType(T.FloatType())),
                T.StructField("error", T.StringType()),
                T.StructField("n_cached", T.IntegerType()),
                T.StructField("n_computed", T.IntegerType()),
            ]
        )
        # One UDF per job spec: predict_batch_udf caches the built model per Python worker under the UDF's id, so
        # reusing the UDF lets later jobs of this session skip the model build.
        if job not in self._udfs:
            self._udfs[job] = predict_batch_udf(
                functools.partial(_make_featurizer, job), return_type=result, batch_size=job.batch_size
            ).asNondeterministic()  # never re-evaluated per referenced field
        udf = self._udfs[job]
        r = frame.withColumn("r", udf("path", "content_hash"))
        return r.select(
            "idx",
            "path",
            F.when(F.col("r.content_hash") != "", F.col("r.content_hash")).alias("content_hash"),
            "label",
            F.when(F.col("r.error") == "", F.col("r.features")).alias("features"),
            F.when(F.col("r.error") != "", F.col("r.error")).alias("error"),
            F.col("r.n_cached").alias("n_cached"),
            F.col("r.n_computed").alias("n_computed"),
        )

    # -- the engine protocol (transferlab.engines.base.Engine) ---------------------------------------------------
    def prepare(self, extractor: Extractor, photos: int | None = None) -> None:
        """Nothing on the driver: each executor builds the networks it runs (``prepare_backbone``)."""

    def featurize(
        self,
        extractor: Extractor,
        sources: Sequence[Any],
        content_hashes: Sequence[str | None] | None,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureResult:
        """The featurize stage on Spark, collected into a ``FeatureResult`` like the local one.

        In-memory images (bytes, PIL) are not files a worker can read; they go through the local engine.
        """
        if not sources or not all(isinstance(s, str | os.PathLike) for s in sources):
            return LocalEngine().featurize(extractor, sources, content_hashes, progress)
        hashes = list(content_hashes) if content_hashes is not None else [None] * len(sources)
        job = _job(extractor, self.batch_size or extractor.options.batch_size or 32)
        frame = self._frame([str(s) for s in sources], hashes, [None] * len(sources))
        with _spark_errors(self.master):
            pdf = self._featurized(frame, job).drop("path", "label").toPandas().sort_values("idx")
        rows = _rows.Rows(
            [h if isinstance(h, str) else None for h in pdf["content_hash"]],
            [None if f is None else np.asarray(f, dtype=np.float32) for f in pdf["features"]],
            [e if isinstance(e, str) else None for e in pdf["error"]],
            int(pdf["n_cached"].sum()),
            int(pdf["n_computed"].sum()),
        )
        if progress is not None:
            progress(len(sources))
        return _rows.rows_to_result(extractor.backbone, extractor.pool, rows)

    def feature_table(
        self,
        extractor: Extractor,
        paths: Sequence[str],
        labels: Sequence[str | None],
        *,
        out: Path,
        meta: dict[str, Any],
        progress: Callable[[int], None] | None = None,
    ) -> TableSummary:
        """Featurize on Spark and let the executors write the Parquet feature table (nothing is collected)."""
        from pyspark.sql import functions as F

        t = time.perf_counter()
        out = _rows.prepare_out(out)
        job = _job(extractor, self.batch_size or extractor.options.batch_size or 32)
        frame = self._frame(list(paths), [None] * len(paths), list(labels))
        with _spark_errors(self.master):
            # Parquet output goes through Spark's commit protocol: a retried or speculative task never leaves a
            # second copy of its rows, so every input appears exactly once even when an executor dies.
            self._featurized(frame, job).select(*_rows.TABLE_COLUMNS).write.mode("overwrite").parquet(str(out))
            counts = (
                self.spark.read.parquet(str(out))
                .agg(F.count("*").alias("rows"), F.count("error").alias("errors"))
                .collect()[0]
            )
        _rows.write_meta(out, meta)
        return TableSummary(out, int(counts["rows"]), int(counts["errors"]), seconds=time.perf_counter() - t)

    def predict_table(self, clf: Any, paths: Sequence[str], out: Path) -> TableSummary:
        """Batch predict on Spark: every worker loads the saved model once and runs its ``predict_images``."""
        import hashlib

        from pyspark.sql import functions as F

        t = time.perf_counter()
        model_dir = Path(clf.model_dir_) if getattr(clf, "model_dir_", None) else None
        if model_dir is None:
            raise TransferlabError("predict on Spark needs a saved model; save it first and load it with load()")
        files = {p.name: p.read_bytes() for p in (model_dir / "model.json", model_dir / "head.safetensors")}
        key = hashlib.sha256(b"".join(files.values())).hexdigest()
        cache_root = None
        if clf.use_cache:
            cache_root = str(Path(clf.cache_dir) if clf.cache_dir is not None else default_cache_dir())
        options = {
            "weights": str(clf.weights) if clf.weights else None,
            "cache_dir": cache_root,
            "use_cache": clf.use_cache,
            "batch_size": self.batch_size or clf.batch_size or 32,
            "num_workers": 0,
        }
        out = _rows.prepare_out(out)
        frame = self._frame(list(paths), [None] * len(paths), [None] * len(paths)).select("path")
        fn = functools.partial(_predict_partition, cls=type(clf), key=key, files=files, options=options)
        with _spark_errors(self.master):
            frame.mapInPandas(fn, _PREDICTION_DDL).write.mode("overwrite").parquet(str(out))
            counts = (
                self.spark.read.parquet(str(out))
                .agg(F.count("*").alias("rows"), F.count("error").alias("errors"))
                .collect()[0]
            )
        return TableSummary(out, int(counts["rows"]), int(counts["errors"]), seconds=time.perf_counter() - t)

    def fit_head(self, head: Any, X: np.ndarray, y: np.ndarray) -> bool:
        """Fit ``head`` with Spark ML when the training matrix is over :attr:`collect_limit`; False otherwise.

        Below the limit (and for the svm head, which Spark ML has only for two classes) the caller fits the local
        head on the collected matrix, exactly as the local engine does.
        """
        # Imported here, not at the top: every executor's Python worker imports this module for the featurize UDF,
        # and the heads bring scikit-learn and SciPy (~1 s of a worker's start) that only the driver's fit uses.
        from ..heads import LogRegHead, MLPHead
        from .spark_ml import fit_spark_head

        if not isinstance(head, LogRegHead | MLPHead) or np.asarray(X).size < self.collect_limit:
            return False
        import pandas as pd
        from pyspark.ml.functions import array_to_vector

        classes = np.unique(np.asarray(y).astype(str))
        index = {c: float(k) for k, c in enumerate(classes)}
        pdf = pd.DataFrame({"f": list(np.asarray(X, dtype=np.float32)), "label": [index[c] for c in np.asarray(y)]})
        df = self.spark.createDataFrame(pdf, "f array<float>, label double").select(
            array_to_vector("f").alias("features"), "label"
        )
        with _spark_errors(self.master):
            fit_spark_head(head, df, classes)
        return True


class _spark_errors:
    """Turn a failed Spark job into one line (the Python error from the worker when there is one)."""

    def __init__(self, master: str | None) -> None:
        self.master = master or "the Spark cluster"

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, TransferlabError | KeyboardInterrupt):
            return False
        from pyspark.errors import PySparkException

        try:
            from py4j.protocol import Py4JError
        except ImportError:  # pragma: no cover
            Py4JError = PySparkException  # type: ignore[misc,assignment]
        if not isinstance(exc, PySparkException | Py4JError):
            return False
        text = str(exc)
        marker = "transferlab.errors.TransferlabError: "
        if marker in text:
            raise TransferlabError(text.split(marker, 1)[1].splitlines()[0]) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise TransferlabError(f"Spark job on {self.master} failed: {lines[-1] if lines else type(exc).__name__}")
