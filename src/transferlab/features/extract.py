"""The featurize stage for any backbone (dispatched on its type); :func:`prepare_backbone`, the one way a stage gets
its backbone ready; and :class:`Extractor`, which adds the cache and the engine: what the pipeline calls."""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._progress import Reporter
from .._runtime import resolve_device
from ..backbones import Backbone, FaceBackbone, ImageBackbone, create_backbone
from ..cache import default_cache_dir
from ..errors import TransferlabError
from .face_rows import featurize_faces
from .images import featurize_images
from .options import FeatureOptions
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


def prepare_backbone(
    options: FeatureOptions,
    *,
    device: str | None = None,
    tuned: dict[str, Any] | None = None,
    expected_weights: str | None = None,
) -> Backbone:
    """The backbone ``options`` describe, built, checked and ready to run: the one way a featurize stage gets its
    backbone, in this process and on Spark's executors alike.

    Parameters
    ----------
    options
        Backbone, weights, device, recipe, runtime and cache root.
    device
        Overrides ``options.device`` (a Spark executor uses the device it has).
    tuned
        Fine-tuned tensors of the network's top blocks (a saved fine-tuned model's), or None.
    expected_weights
        sha256 the weights must have (a saved model's, or the driver's), or None.
    """
    bb = create_backbone(options.backbone, weights=options.weights, download=options.download)
    if tuned:
        bb.tune(tuned)
    if expected_weights and bb.weights_hash != expected_weights:
        raise TransferlabError(
            f"the {options.backbone} weights here ({bb.weights_file}, sha256 {bb.weights_hash[:12]}) differ from "
            f"those the model was trained with ({expected_weights[:12]}); pass the original file with --weights "
            "(on a cluster: install the same weights package on every node, or a --weights path every node reads)"
        )
    root = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
    return bb.prepare(options, device=device or resolve_device(options.device), cache_root=root)


class Extractor:
    """Backbone + decoding + cache, run by an engine: images in, cached feature rows out.

    The backbone is built on first use (:func:`prepare_backbone`) and checked against the weights a saved model
    was trained with. The engine (:class:`transferlab.engines.LocalEngine`, or Spark's) decides where
    :meth:`extract` runs; :meth:`compute` is the stage in this process, which the local engine calls.

    Parameters
    ----------
    options
        The featurize options (a model's :class:`~transferlab.options.Options` is one).
    engine
        Where :meth:`extract` runs: an object with ``featurize(extractor, sources, content_hashes, progress)``.
    reporter
        Where progress bars go.
    expected_weights
        sha256 the weights must have (a saved model's), or None.
    tuned
        Fine-tuned tensors of the backbone's top blocks (a saved fine-tuned model's), or None.
    """

    def __init__(
        self,
        options: FeatureOptions,
        engine: Any,
        *,
        reporter: Reporter | None = None,
        expected_weights: str | None = None,
        tuned: dict[str, Any] | None = None,
    ) -> None:
        self.options = options
        self.engine = engine
        self.reporter = reporter or Reporter(options.verbose)
        self.expected_weights = expected_weights
        self.tuned = tuned
        self.counts: Counter[str] = Counter()  # images cached / computed / failed over every call, for summaries
        self.seconds = 0.0  # time spent featurizing in extract() over every call
        self.build_seconds = 0.0  # one-time: building the networks where the stage runs (not in ``seconds``)
        self._backbone: Any = None

    @property
    def name(self) -> str:
        """The backbone's registered name."""
        return self.options.backbone

    @property
    def pool(self) -> str:
        """How whole-image feature maps are pooled (``avg`` or ``flatten``)."""
        return self.options.pool.value

    @property
    def backbone(self) -> Any:
        """The built backbone (created on first use; weights are located and checked here)."""
        if self._backbone is None:
            self._backbone = prepare_backbone(self.options, tuned=self.tuned, expected_weights=self.expected_weights)
        return self._backbone

    @property
    def cache(self) -> Any:
        """This backbone's feature cache (None with ``use_cache=False``)."""
        return open_cache(self.backbone, self.pool, self.options.cache_dir, self.options.use_cache)

    def compute(
        self,
        sources: Sequence[Any],
        content_hashes: Sequence[str | None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureResult:
        """The featurize stage in this process: feature rows from the cache where possible, else computed."""
        return extract(
            self.backbone,
            sources,
            pool=self.pool,
            content_hashes=content_hashes,
            cache=self.cache,
            batch_size=self.options.batch_size,
            num_workers=self.options.num_workers,
            progress=progress,
        )

    def extract(
        self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None, *, label: str = "features"
    ) -> FeatureResult:
        """Feature rows for images (paths, bytes or PIL images), wherever the engine runs the stage; ``label``
        names the progress bar."""
        _ = self.backbone  # located (and checked) here, before any engine starts work
        start = time.perf_counter()
        cache = self.cache if content_hashes is not None else None
        if cache is None or not cache.holds(content_hashes):  # type: ignore[arg-type]
            # Built where the stage runs: once, and not counted in the photos/s. Not when every row is cached (a
            # rerun, a study's runs): nothing is computed, and a damaged entry builds the networks on first use.
            self.engine.prepare(self, len(sources))
        built = time.perf_counter() - start
        self.build_seconds += built
        if built >= 1.0:
            self.reporter.info(f"{self.name}: networks ready in {built:.1f} s (once; not counted in photos/s)")
        start = time.perf_counter()
        with self.reporter.task(label, len(sources)) as advance:
            res: FeatureResult = self.engine.featurize(self, sources, content_hashes, advance)
        self.counts.update(res.stats())
        self.seconds += time.perf_counter() - start
        return res
