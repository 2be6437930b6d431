"""The featurize and predict stages as table rows: the one format both engines read and write.

A feature table is a folder of Parquet files with one row per input image:

========== ==================== ==========================================================================
column     type                 meaning
========== ==================== ==========================================================================
path       string               the image file
content_hash string (null)      hash of the decoded pixels (the feature-cache key); null when undecodable
label      string (null)        the class, when the input named one
features   list<float32> (null) whole-image backbones: the feature vector; face backbones: every face's row
                                (:mod:`transferlab.backbones.faces` layout) flattened, ``row_width`` values per face
                                (empty: no face found); null when ``error`` is set
error      string (null)        why the image has no features (``reason: detail``), else null
========== ==================== ==========================================================================

``_transferlab.json`` beside the Parquet files records the feature spec (the cache key) and ``row_width``. Files
whose names start with ``_`` are ignored by Spark and pyarrow readers, so the folder reads as one table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import atomic_write_bytes
from ..errors import TransferlabError
from ..features import FeatureResult, extract

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TABLE_COLUMNS = ("path", "content_hash", "label", "features", "error")
META_FILE = "_transferlab.json"
PREDICTION_COLUMNS = ("path", "label", "probabilities", "error", "box", "face_score")


def error_text(reason: str, detail: str) -> str:
    """One error string, as ``predict`` prints it."""
    return f"{reason}: {detail}" if detail else reason


def parse_error(text: str) -> tuple[str, str]:
    """Inverse of :func:`error_text`."""
    reason, _, detail = text.partition(": ")
    return reason, detail


@dataclass
class Rows:
    """The featurize stage's output for a list of images, as table columns."""

    content_hashes: list[str | None]
    features: list[np.ndarray | None]
    errors: list[str | None]
    n_cached: int
    n_computed: int


def feature_rows(
    sources: Sequence[Any],
    backbone: Any,
    *,
    pool: str,
    content_hashes: Sequence[str | None] | None = None,
    cache: Any = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Rows:
    """Run the featurize stage (:func:`transferlab.features.extract`) and return table rows.

    Both engines call this, the local one over all images and the Spark one per Arrow batch, so a feature is the
    same whichever engine computed it. An image's rows (one, or one per face) are flattened into one list.
    """
    n = len(sources)
    res = extract(
        backbone,
        sources,
        pool=pool,
        content_hashes=content_hashes,
        cache=cache,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        hash_all=True,
    )
    feats = [None if b is None else np.asarray(b, dtype=np.float32).reshape(-1) for b in res.bags]
    errors = [error_text(*res.errors[i]) if i in res.errors else None for i in range(n)]
    return Rows(list(res.content_hashes), feats, errors, res.n_cached, res.n_computed)


def rows_to_result(backbone: Any, pool: str, rows: Rows) -> FeatureResult:
    """Rebuild the stage's result from rows (each image's flat list back into rows of ``row_width``)."""
    width = backbone.row_width(pool)
    errors = {i: parse_error(e) for i, e in enumerate(rows.errors) if e is not None}
    bags = [None if f is None else np.asarray(f, dtype=np.float32).reshape(-1, width) for f in rows.features]
    return FeatureResult(bags, width, errors, rows.n_cached, rows.n_computed, content_hashes=rows.content_hashes)


def table_frame(paths: Sequence[str], labels: Sequence[str | None], rows: Rows) -> pd.DataFrame:
    """A feature table as a pandas DataFrame (the local engine's output before writing)."""
    import pandas as pd

    return pd.DataFrame(
        {
            "path": list(paths),
            "content_hash": rows.content_hashes,
            "label": list(labels),
            "features": rows.features,
            "error": rows.errors,
        }
    )


def table_schema() -> Any:
    """The Arrow schema of a feature table (Spark writes the same types)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("content_hash", pa.string()),
            ("label", pa.string()),
            ("features", pa.list_(pa.float32())),
            ("error", pa.string()),
        ]
    )


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """An empty output folder (an existing feature table or prediction folder is replaced)."""
    import shutil

    p = Path(out)
    if p.is_file():
        raise TransferlabError(f"--out {p}: is a file; give a folder name for the Parquet table")
    if p.is_dir():
        names = [c.name for c in p.iterdir()]
        if names and not any(n.endswith(".parquet") or n in (META_FILE, "_SUCCESS") for n in names):
            raise TransferlabError(f"--out {p}: folder exists and is not a transferlab table; choose another name")
        shutil.rmtree(p)
    return p


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write ``_transferlab.json`` into a table folder."""
    atomic_write_bytes(out / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())


def write_local_table(df: pd.DataFrame, out: Path, schema: Any) -> None:
    """Write a pandas frame as ``out/part-00000.parquet`` (one file; Spark writes one per partition)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), out / "part-00000.parquet")


def read_feature_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a feature table (either engine's) into pandas; ``features`` become float32 arrays.

    Returns
    -------
    pandas.DataFrame
        Columns ``path, content_hash, label, features, error``; ``df.attrs`` holds ``_transferlab.json``.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise TransferlabError(f"{p}: no such feature table")
    df = pq.read_table(p).to_pandas()
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise TransferlabError(f"{p}: not a transferlab feature table (missing columns {', '.join(missing)})")
    df["features"] = [None if f is None else np.asarray(f, dtype=np.float32) for f in df["features"]]
    meta_file = p / META_FILE
    if meta_file.is_file():
        df.attrs.update(json.loads(meta_file.read_text()))
    return df[list(TABLE_COLUMNS)]


def prediction_frame(preds: Sequence[Any]) -> pd.DataFrame:
    """Predictions (:class:`transferlab.predictions.Prediction`) as the prediction table's columns."""
    import pandas as pd

    return pd.DataFrame(
        {
            "path": [p.path for p in preds],
            "label": [p.label for p in preds],
            "probabilities": [dict(p.probabilities) if p.error is None else None for p in preds],
            "error": [p.error for p in preds],
            "box": [p.box for p in preds],
            "face_score": [p.face_score for p in preds],
        }
    )


def prediction_schema() -> Any:
    """Arrow schema of a predictions table."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("probabilities", pa.map_(pa.string(), pa.float64())),
            ("error", pa.string()),
            ("box", pa.list_(pa.float64())),
            ("face_score", pa.float64()),
        ]
    )
