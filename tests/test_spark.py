"""The Spark engine gives the local engine's answers: same features, same cache, same predictions, error rows.

One local[2] SparkSession serves the whole module (starting one costs seconds). The cluster test starts a real
standalone master and two workers on loopback, kills an executor mid-job and checks the table is still complete.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import PRESIDENTS, REPO, copy_subset

pyspark = pytest.importorskip("pyspark")

from transferlab.engines import get_engine, read_feature_table  # noqa: E402

# The JVMs these tests start run seconds-long jobs on a 2-core machine: the optimising JIT compiler and the parallel
# garbage collector's threads spend CPU they never win back (the local session's JVM: ~25 -> ~17 s of CPU with these).
# Test settings only; what Spark computes does not depend on them.
JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for every test here; the engines find it as the active session."""
    from transferlab.engines.spark import spark_session

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARK_SUBMIT_OPTS", JVM_OPTS)  # read when spark-submit starts the session's JVM
        session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def engine(spark):
    return get_engine("spark", "local[2]")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five real photos per class plus two files that are not images (one in a class, one CSV-like)."""
    root = copy_subset(tmp_path_factory.mktemp("spark") / "photos", 5)
    (root / "bush" / "truncated.jpg").write_bytes(next((PRESIDENTS / "bush").glob("*.jpg")).read_bytes()[:300])
    (root / "obama" / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tables(tmp_path_factory, photos, engine):
    """The same folder featurized by both engines, each into its own cache."""
    import transferlab.api as api

    base = tmp_path_factory.mktemp("tables")
    out = {}
    for name, eng in (("local", "local"), ("spark", engine)):
        summary = api.featurize_table(
            photos, base / f"{name}.parquet", backbone="mobilenet_v2", cache_dir=base / f"cache-{name}", engine=eng
        )
        out[name] = (summary, read_feature_table(summary.out), base / f"cache-{name}")
    return out


def test_spark_features_equal_local_features(tables):
    (_, local, _), (summary, spark, _) = tables["local"], tables["spark"]
    assert summary.rows == len(local) == len(spark) == 22
    local, spark = local.set_index("path"), spark.set_index("path").loc[local["path"]]
    assert (local["label"] == spark["label"]).all()
    good = local["error"].isna()
    assert good.sum() == 20
    assert (local["content_hash"][good] == spark["content_hash"][good]).all()
    diff = max(
        float(np.abs(a - b).max()) for a, b in zip(local["features"][good], spark["features"][good], strict=True)
    )
    assert diff < 1e-4
    assert spark.attrs["feature_spec"] == local.attrs["feature_spec"]


def test_both_engines_write_the_same_parquet_schema(tables):
    import pyarrow.parquet as pq

    schemas = {name: pq.read_schema(next(t[0].out.glob("part-*.parquet"))) for name, t in tables.items()}
    assert [(f.name, str(f.type)) for f in schemas["local"]] == [(f.name, str(f.type)) for f in schemas["spark"]]


def test_unreadable_images_are_error_rows_not_failed_jobs(tables):
    summary, spark, _ = tables["spark"]
    assert summary.errors == 2
    bad = spark[spark["error"].notna()].set_index("path")
    assert sorted(Path(p).name for p in bad.index) == ["notes.jpg", "truncated.jpg"]
    assert bad["features"].isna().all()
    assert all(e.split(":")[0] in ("truncated", "not an image", "unreadable") for e in bad["error"])


def test_local_engine_reads_what_the_spark_engine_cached(tables, photos):
    import transferlab

    _, spark, cache = tables["spark"]
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg", cache_dir=cache)
    paths = spark["path"].tolist()
    res = clf.featurize(paths)
    assert res.n_computed == 0 and res.n_cached == 20
    got = dict(zip(paths, res.features, strict=True))
    for p, f in zip(spark["path"], spark["features"], strict=True):
        if f is not None:
            np.testing.assert_array_equal(got[p], f)


def test_spark_engine_reads_what_the_local_engine_cached(tables, engine):
    import transferlab

    _, local, cache = tables["local"]
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg", cache_dir=cache, engine=engine)
    res = clf.featurize(local["path"].tolist())
    assert (res.n_computed, res.n_cached, len(res.errors)) == (0, 20, 2)


def test_spark_batch_predictions_equal_local_predictions(trained_model, photos, engine, tmp_path):
    from typer.testing import CliRunner

    import transferlab
    from transferlab.cli import app

    files = transferlab._files.expand_paths([photos])
    local = {p.path: p for p in transferlab.load(trained_model, cache_dir=tmp_path / "c1").predict_images(files)}
    result = CliRunner().invoke(
        app,
        [
            *("predict", str(trained_model), str(photos), "--engine", "spark"),
            *("--out", str(tmp_path / "p.parquet"), "--cache-dir", str(tmp_path / "c2"), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == len(files) == 22
    import pandas as pd

    spark = pd.read_parquet(tmp_path / "p.parquet")
    assert sorted(spark["path"]) == sorted(local)
    for row in spark.itertuples():
        ref = local[row.path]
        assert row.label == ref.label
        if ref.error is not None:
            assert row.error == ref.error and row.probabilities is None
            continue
        probs = dict(row.probabilities)
        assert probs.keys() == ref.probabilities.keys()
        assert max(abs(probs[c] - ref.probabilities[c]) for c in probs) < 1e-5


def test_train_on_spark_gives_the_local_model(small_photos, engine, tmp_path):
    import transferlab

    kw = dict(backbone="mobilenet_v2", head="logreg", cache_dir=tmp_path / "cache", test_size=0.25)
    local = transferlab.train(small_photos, tmp_path / "local", **kw)
    spark = transferlab.train(small_photos, tmp_path / "spark", engine=engine, **kw)
    assert spark.metrics["accuracy"] == local.metrics["accuracy"]
    a, b = transferlab.load(tmp_path / "local"), transferlab.load(tmp_path / "spark")
    np.testing.assert_allclose(a.head_.coef_, b.head_.coef_, atol=1e-4)


def test_a_fine_tuned_model_featurizes_on_spark_with_its_tuned_blocks(small_photos, engine, tmp_path):
    import transferlab

    kw = dict(backbone="mobilenet_v2", finetune=1, finetune_params={"epochs": 1, "copies": 1}, test_size=0.25)
    local = transferlab.train(small_photos, tmp_path / "local", cache_dir=tmp_path / "c1", **kw)
    spark = transferlab.train(small_photos, tmp_path / "spark", engine=engine, cache_dir=tmp_path / "c2", **kw)
    assert spark.metrics["accuracy"] == local.metrics["accuracy"]
    a, b = transferlab.load(tmp_path / "local"), transferlab.load(tmp_path / "spark")
    assert a.model_meta_["features"]["finetuned_sha256"] == b.model_meta_["features"]["finetuned_sha256"]
    np.testing.assert_allclose(a.head_.coef_, b.head_.coef_, atol=1e-4)


def test_a_fine_tuned_face_model_gives_the_local_answers_on_spark(small_photos, engine, tmp_path):
    """sface with --finetune 1, trained on Spark: executors embed with the tuned top block (not the pretrained
    one), so Spark's batch predictions are the model's local answers. (Training on Spark = training locally is
    checked above for a whole-image model.)"""
    import transferlab

    kw = dict(backbone="sface", finetune=1, finetune_params={"epochs": 1}, test_size=0.25)
    transferlab.train(small_photos, tmp_path / "spark", engine=engine, cache_dir=tmp_path / "c2", **kw)
    b = transferlab.load(tmp_path / "spark")
    assert b.model_meta_["features"]["finetuned_sha256"]
    from typer.testing import CliRunner

    from transferlab.cli import app

    model, out = tmp_path / "spark", tmp_path / "p.parquet"
    result = CliRunner().invoke(
        app,
        [
            *("predict", str(model), str(small_photos), "--engine", "spark", "--out", str(out)),
            *("--cache-dir", str(tmp_path / "c3"), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    import pandas as pd

    rows = pd.read_parquet(out)
    local = {p.path: p for p in b.predict_images(sorted(rows["path"]))}  # the same model, predicting locally
    for row in rows.itertuples():
        ref = local[row.path]
        assert row.label == ref.label
        if ref.error is not None:  # a photo without a face: the same answer, no probabilities
            assert row.error == ref.error and row.probabilities is None
            continue
        probs = dict(row.probabilities)
        assert max(abs(probs[c] - ref.probabilities[c]) for c in probs) < 1e-4


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_spark_ml_head_is_saved_as_a_model_local_predict_reproduces(spark, head, tmp_path):
    """Over the collect limit the head is fitted by Spark ML; the saved model answers as the Spark model does."""
    from pyspark.ml.functions import vector_to_array

    from transferlab.engines.spark import SparkEngine

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 2
    y = np.repeat(np.array(["a", "b", "c"]), 40)
    X = (centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 16))).astype(np.float32)
    from transferlab.heads import HEADS, make_head

    fitted = make_head(head)
    assert SparkEngine("local[2]", collect_limit=0).fit_head(fitted, X, y)  # over the limit: Spark ML fits it
    model = fitted.spark_model_
    df = spark.createDataFrame([(x.tolist(),) for x in X], "f array<float>")
    from pyspark.ml.functions import array_to_vector

    out = model.transform(df.select(array_to_vector("f").alias("features")))
    want = np.array(out.select(vector_to_array("probability").alias("p")).toPandas()["p"].tolist())
    got = HEADS[head].from_state(*fitted.to_state()).predict_proba(X)  # what model.json + safetensors hold
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_face_backbone_on_spark_gives_the_local_face_rows(engine, tmp_path):
    import transferlab.api as api

    photos = copy_subset(tmp_path / "faces", 2)
    tabs = {}
    for name, eng in (("local", "local"), ("spark", engine)):
        s = api.featurize_table(photos, tmp_path / f"{name}.parquet", backbone="sface", use_cache=False, engine=eng)
        tabs[name] = read_feature_table(s.out).set_index("path")
    local, spark = tabs["local"], tabs["spark"].loc[tabs["local"].index]
    assert spark.attrs["row_width"] == 128 + 15
    for a, b in zip(local["features"], spark["features"], strict=True):
        assert a.shape == b.shape and a.size % (128 + 15) == 0
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_without_pyspark_the_local_engine_works_and_spark_says_what_to_install():
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import transferlab, transferlab.cli, transferlab.engines\n"
        "from transferlab.engines import get_engine\n"
        "assert get_engine('local').name == 'local'\n"
        "try:\n    get_engine('spark')\nexcept transferlab.TransferlabError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "pip install pyspark==4.3.0" in out


def test_the_featurize_udfs_module_leaves_the_heads_to_the_driver():
    """Every executor's Python worker imports the engine module for the featurize UDF: scikit-learn and SciPy (what
    the heads bring, ~1 s of a worker's start) stay out of it; only the driver's Spark ML fit imports the heads."""
    code = "import sys, transferlab.engines.spark\nprint(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


# -- a real standalone cluster ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid`` (read from /proc, no extra dependency)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _executors(worker_pid: int) -> list[int]:
    return [p for p, cmd in _children(worker_pid) if "CoarseGrainedExecutorBackend" in cmd]


@pytest.mark.cluster
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the executor process")
def test_standalone_cluster_featurize_survives_a_killed_executor(tmp_path):
    """A two-worker standalone cluster featurizes 100 photos (25 per class) in 8 partitions; one executor is
    SIGKILLed once features flow, and the table still has every photo exactly once, without errors.

    100 photos rather than all 812 test the same thing: the executor is killed once 20 of 100 are cached (each
    executor has finished a partition of 12-13 and started its next), so at least 5 of the 8 partitions are still to
    do and the killed executor holds a running task. If Spark did not rerun a lost task, its rows would be missing;
    if it reran a finished one, rows would be duplicated; both fail the assertions below, as they did with every
    photo and with 200.
    """
    photos = copy_subset(tmp_path / "photos", 25)
    spark_home = Path(pyspark.__file__).parent
    spark_class = spark_home / "bin" / "spark-class"
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO / "src")}
    env.update(PYSPARK_PYTHON=sys.executable, SPARK_WORKER_DIR=str(tmp_path / "work"), SPARK_LOG_DIR=str(tmp_path))
    env["JAVA_TOOL_OPTIONS"] = JVM_OPTS  # every JVM of the cluster: master, workers, executors, the job's driver
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    log = (tmp_path / "cluster.log").open("w")

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen([str(spark_class), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(_free_port()),
        )
        workers = [
            start(
                "org.apache.spark.deploy.worker.Worker",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(_free_port()),
                url,
            )
            for _ in range(2)
        ]
        cache = tmp_path / "cache"
        out = tmp_path / "table.parquet"
        job = subprocess.Popen(
            [
                *(sys.executable, "-m", "transferlab", "featurize", str(photos), "--backbone", "mobilenet_v2"),
                *("--out", str(out), "--engine", "spark", "--master", url, "--partitions", "8", "--json"),
                *("--cache-dir", str(cache), "--quiet"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Kill one worker's executor once features are flowing (the cache fills as images are featurized). The wait
        # follows the job's progress, not a clock: on a loaded machine it is slower, never a failure.
        killed = None
        while killed is None and job.poll() is None:
            done = sum(1 for _ in cache.rglob("*.npy")) if cache.exists() else 0
            executors = _executors(workers[0].pid)
            if done >= 20 and executors:
                os.kill(executors[0], signal.SIGKILL)
                killed = (executors[0], done)
            time.sleep(0.2)
        stdout, stderr = job.communicate()
        assert killed is not None, f"never saw an executor to kill\n{stderr[-3000:]}"
        assert job.returncode == 0, stderr[-3000:]
        assert killed[1] < 100, "the executor was killed only after the job had finished featurizing"
        summary = json.loads(stdout.strip().splitlines()[-1])
        table = read_feature_table(out)
        expected = sorted(str(p) for p in photos.rglob("*") if p.is_file())
        assert len(expected) == 100
        assert summary["rows"] == len(table) == len(expected)
        assert not table["path"].duplicated().any()
        assert sorted(table["path"]) == expected
        assert table["error"].isna().all() and table["features"].map(len).eq(1280).all()
    finally:
        for p in reversed(procs):
            p.kill()
        for p in procs:
            p.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
