"""The featurize stage for any backbone (dispatched on its type), and :class:`Extractor`, which adds building the
backbone, the cache and the engine: what the pipeline calls."""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._progress import Reporter
from .._runtime import resolve_device
from ..backbones import FaceBackbone, ImageBackbone, create_backbone
from ..cache import default_cache_dir
from ..errors import TransferlabError
from .face_rows import featurize_faces
from .images import featurize_images
from .result import FeatureResult
from .spec import open_cache


@functools.singledispatch
def extract(
    backbone: Any,
    sources: Sequence[Any],
    *,
    pool: str = "avg",
    content_hashes: Sequence[str | None] | None = None,
    cache: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    hash_all: bool = False,
) -> FeatureResult:
    """Feature rows for every image: one per image for whole-image backbones, one per face for face backbones.

    Parameters
    ----------
    backbone
        A built backbone (:func:`transferlab.backbones.create_backbone`); the implementation is chosen by its type.
    sources
        File paths, raw bytes or PIL images.
    pool, content_hashes, cache, batch_size, num_workers, progress, hash_all
        See :func:`~transferlab.features.images.featurize_images` (face backbones use what applies to them).

    Returns
    -------
    FeatureResult
    """
    raise TransferlabError(f"{type(backbone).__name__} is not a backbone transferlab can featurize with")


@extract.register
def _(backbone: ImageBackbone, sources: Sequence[Any], **kw: Any) -> FeatureResult:
    return featurize_images(sources, backbone, **kw)


@extract.register
def _(backbone: FaceBackbone, sources: Sequence[Any], **kw: Any) -> FeatureResult:
    kw = {k: v for k, v in kw.items() if k != "pool"}
    return featurize_faces(sources, backbone, **kw)


class Extractor:
    """Backbone + decoding + cache (+ an engine): images in, cached feature rows out.

    The backbone is built on first use, on its device and runtime, and checked against the weights a saved model
    was trained with. An engine (e.g. :class:`transferlab.engines.SparkEngine`) runs the stage elsewhere; without
    one it runs in this process.

    Parameters
    ----------
    backbone
        Registered backbone name.
    pool, weights, download, device, runtime, cache_dir, use_cache, batch_size, num_workers
        As for :class:`transferlab.Classifier`.
    engine
        An object with the engine interface (``featurize(sources, backbone, ...)``), or None for this process.
    reporter
        Where progress bars go.
    expected_weights
        sha256 the weights must have (a saved model's), or None.
    tuned
        Fine-tuned tensors of a whole-image backbone's top blocks (a saved fine-tuned model's), or None.
    recipe
        ``"portable"`` or ``"fast"`` (:func:`transferlab.backbones.device_recipe`).
    """

    def __init__(
        self,
        backbone: str,
        *,
        pool: str = "avg",
        weights: str | os.PathLike[str] | None = None,
        download: bool = False,
        device: str = "auto",
        runtime: str = "torch",
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        engine: Any = None,
        reporter: Reporter | None = None,
        expected_weights: str | None = None,
        tuned: dict[str, Any] | None = None,
        recipe: str = "portable",
    ) -> None:
        self.name = backbone
        self.pool = pool
        self.weights = weights
        self.download = download
        self.device = device
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.engine = engine
        self.reporter = reporter or Reporter(False)
        self.expected_weights = expected_weights
        self.tuned = tuned
        self.recipe = recipe
        self.counts: Counter[str] = Counter()  # images cached / computed / failed over every call, for summaries
        self.seconds = 0.0  # time spent in extract() over every call
        self._backbone: Any = None

    @property
    def backbone(self) -> Any:
        """The built backbone (created on first use; weights are located and checked here)."""
        if self._backbone is None:
            bb = create_backbone(self.name, weights=self.weights, download=self.download)
            if self.tuned:
                bb.tune(self.tuned)
            bb.to(resolve_device(self.device)).use_recipe(self.recipe)
            root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
            if isinstance(bb, FaceBackbone):
                bb.use_cache_root(root)  # where the face networks' float graphs are kept
            elif self.runtime == "onnxruntime":
                bb.use_onnxruntime(root)
            if self.expected_weights and bb.weights_hash != self.expected_weights:
                raise TransferlabError(
                    f"the {self.name} weights here ({bb.weights_file}, sha256 {bb.weights_hash[:12]}) differ from "
                    f"those the model was trained with ({self.expected_weights[:12]}); pass the original file with "
                    "--weights"
                )
            self._backbone = bb
        return self._backbone

    @property
    def cache(self) -> Any:
        """This backbone's feature cache (None with ``use_cache=False``)."""
        return open_cache(self.backbone, self.pool, self.cache_dir, self.use_cache)

    def extract(
        self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None, *, label: str = "features"
    ) -> FeatureResult:
        """Feature rows for images (paths, bytes or PIL images), from the cache where possible."""
        bb = self.backbone
        kw: dict[str, Any] = {
            "pool": self.pool,
            "content_hashes": content_hashes,
            "cache": self.cache,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
        }
        start = time.perf_counter()
        with self.reporter.task(label, len(sources)) as advance:
            if self.engine is not None:
                res: FeatureResult = self.engine.featurize(sources, bb, progress=advance, **kw)
            else:
                res = extract(bb, sources, progress=advance, **kw)
        self.counts.update(res.stats())
        self.seconds += time.perf_counter() - start
        return res
