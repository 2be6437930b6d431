"""Features: images → backbone features, batched, decoded in worker processes or lanes, computed once and cached."""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._runtime import tune_allocator
from .cache import FeatureCache
from .intake import MIN_SIDE, PIL_STATE_LOCK, ImageRejected, content_hash, load_rgb, max_pixels, read_rgb

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from .backbones import Backbone

# Bump when feature computation changes, so caches are never reused across versions.
# 2: conv+BN fused; 3: batched uint8 normalisation; 4: torch decode/resize; 5: checksummed cache entries.
FEATURES_VERSION = "5"


def feature_spec(backbone: Any, pool: str) -> dict[str, Any]:
    """Everything that determines a feature vector; the cache key and part of model.json."""
    if backbone.cfg.family == "face":
        return {
            "backbone": backbone.cfg.name,
            "architecture": backbone.cfg.architecture,
            "weights_sha256": backbone.weights_hash,
            "preprocessing": backbone.cfg.preprocessing(),
            "decode_draft": list(FACE_DECODE_DRAFT),
            "version": FEATURES_VERSION,
        }
    spec = {
        "backbone": backbone.cfg.name,
        "architecture": backbone.cfg.architecture,
        "weights_sha256": backbone.weights_hash,
        "preprocessing": backbone.cfg.preprocessing(),
        "pool": pool,
        "version": FEATURES_VERSION,
    }
    if getattr(backbone, "precision", "fp32") != "fp32":  # GPU features (bf16) never mix with CPU ones (fp32)
        spec["precision"] = backbone.precision
    return spec


@dataclass
class FeatureResult:
    """Features for a list of images, row-aligned with the input; failed rows are NaN and listed in ``errors``."""

    features: np.ndarray
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0
    n_damaged: int = 0  # damaged cache entries found (and recomputed)
    content_hashes: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of rows that have features."""
        mask = np.ones(len(self.features), dtype=bool)
        mask[list(self.errors)] = False
        return mask


def _decode(source: Any, draft: tuple[int, int] | None) -> Image.Image:
    from PIL import Image

    if isinstance(source, Image.Image):
        from .intake import _to_rgb

        return _to_rgb(source)
    if isinstance(source, bytes | bytearray):
        return load_rgb(bytes(source), draft=draft)
    return read_rgb(source, draft=draft)


def _read_bytes(source: Any) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", exc.strerror or str(exc)) from None


def decode_pixels(source: Any, draft: tuple[int, int]) -> torch.Tensor:
    """Decode a path, bytes or PIL image to an upright ``uint8`` RGB tensor ``(3, H, W)``.

    JPEGs of ordinary size go through libjpeg-turbo in ``torchvision.io.decode_jpeg`` (EXIF orientation applied),
    about 25% faster than Pillow here. Every other case goes through :func:`transferlab.intake.load_rgb`, the one
    place that knows formats, conversions and limits: other formats, JPEGs torchvision cannot decode (CMYK, broken
    EXIF), and large JPEGs, where Pillow's draft mode decodes at a reduced scale (much faster for camera photos).
    Limits (size, decompression bombs) are checked from the header before decoding.
    """
    import numpy as np
    import torch

    if not isinstance(source, bytes | bytearray | str | os.PathLike):
        return torch.from_numpy(np.array(_decode(source, None))).permute(2, 0, 1)
    data = bytes(source) if isinstance(source, bytes | bytearray) else _read_bytes(source)
    if data[:3] == b"\xff\xd8\xff":
        header = _plain_jpeg(data)
        if header is not None and min(header[0]) < 2 * min(draft):
            from torchvision.io import ImageReadMode, decode_jpeg

            _quiet_torchvision_io_deprecation()

            try:
                return decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=ImageReadMode.RGB,
                    apply_exif_orientation=True,
                )
            except (RuntimeError, ValueError):
                pass  # Pillow below decodes it or says why not
    return torch.from_numpy(np.array(load_rgb(data, draft=draft))).permute(2, 0, 1)


@functools.cache
def _quiet_torchvision_io_deprecation() -> None:
    # torchvision 0.29 deprecates its decoders in favour of TorchCodec (which needs FFmpeg libraries) and warns on
    # every call. They still work and are pinned here; silence only that message, once per process.
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def _plain_jpeg(data: bytes, orientation: bool = False) -> tuple[tuple[int, int], int] | None:
    """``(size, EXIF orientation)`` of an RGB/grey JPEG within the size limits, from its header; else None.

    Such files can skip Pillow and be decoded by libjpeg-turbo (CPU) or nvJPEG (GPU); everything else goes through
    :func:`transferlab.intake.load_rgb`, which reports why a file is unusable. The orientation (1–8, 1 when absent
    or unreadable, as Pillow's ``exif_transpose`` treats it) is read only when asked for: nvJPEG does not apply it.
    """
    import io

    from PIL import Image

    try:
        with PIL_STATE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd metadata (a corrupt EXIF block) is load_rgb's business, not ours
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None
                size, turn = img.size, 1
                if orientation:
                    try:
                        value = img.getexif().get(0x0112, 1)
                    except Exception:  # noqa: BLE001 - a broken EXIF block means "upright", as in Pillow
                        value = 1
                    turn = value if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # noqa: BLE001 - anything odd goes the Pillow route, which reports it properly
        return None
    if min(size) < MIN_SIDE or size[0] * size[1] > max_pixels():
        return None
    return size, turn


class _ImageDataset:
    """Map-style dataset: index → (index, tensor) or (index, reason, detail). Runs in DataLoader workers."""

    def __init__(self, sources: Sequence[Any], indices: Sequence[int], transform: Callable[..., Any], draft) -> None:
        self.sources = sources
        self.indices = list(indices)
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Any, str]:
        i = self.indices[k]
        try:
            return i, self.transform(decode_pixels(self.sources[i], self.draft)), ""
        except ImageRejected as exc:
            return i, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            return i, "unreadable", f"{type(exc).__name__}: {exc}"


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded ``(C, H, W)`` image upright for an EXIF orientation (what Pillow's ``exif_transpose`` does).

    nvJPEG does not apply EXIF orientation (torchvision does it on the CPU only), so GPU-decoded photos are turned
    here, on the device.
    """
    if orientation in (5, 6, 7, 8):
        image = image.transpose(1, 2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image


class _RawJpegDataset(_ImageDataset):
    """For decoding on the device: ordinary JPEGs pass through as raw bytes (decoded in batches by nvJPEG), every
    other file is decoded and transformed here on the CPU, exactly as in :class:`_ImageDataset`."""

    def __getitem__(self, k: int) -> tuple[int, Any, str]:
        import torch

        i = self.indices[k]
        src = self.sources[i]
        if isinstance(src, str | os.PathLike | bytes | bytearray):
            try:
                data = bytes(src) if isinstance(src, bytes | bytearray) else _read_bytes(src)
            except ImageRejected as exc:
                return i, exc.reason, exc.detail
            header = _plain_jpeg(data, orientation=True) if data[:3] == b"\xff\xd8\xff" else None
            if header is not None:
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return i, ("jpeg", raw, header[1]), ""
            src = data
        try:
            return i, ("pixels", self.transform(decode_pixels(src, self.draft)), 1), ""
        except ImageRejected as exc:
            return i, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            return i, "unreadable", f"{type(exc).__name__}: {exc}"


def _collate_raw(batch: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    return batch


def _decode_on_device(
    items: list[tuple[int, torch.Tensor, int]], device: Any, transform: Callable[..., Any]
) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str, str]]]:
    """Decode raw JPEGs on ``device`` in one batched call (nvJPEG on CUDA), upright them and transform them there.

    A batch call fails as a whole when one file is bad, so on failure each file is retried alone, and files the
    device decoder rejects go through the CPU decoder (which reports why a file is unusable).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_torchvision_io_deprecation()
    raws = [r for _, r, _ in items]
    try:
        decoded: list[Any] = decode_jpeg(raws, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        decoded = []
        for r in raws:
            try:
                decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError):
                decoded.append(None)
    good, bad = [], []
    for (i, raw, orientation), img in zip(items, decoded, strict=True):
        try:
            if img is None:  # the CPU decoder either manages or says why the file is unusable
                img = decode_pixels(raw.numpy().tobytes(), (1 << 16, 1 << 16)).to(device)
                orientation = 1  # decode_pixels already applied EXIF orientation
            good.append((i, transform(apply_exif_orientation(img, orientation))))
        except ImageRejected as exc:
            bad.append((i, exc.reason, exc.detail))
    return good, bad


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    import torch

    good = [(i, t) for i, t, _ in batch if not isinstance(t, str)]
    bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, bad


def _cache_lookup(
    sources: Sequence[Any],
    content_hashes: Sequence[str | None] | None,
    cache: FeatureCache | None,
    valid: Callable[[np.ndarray], bool],
    hash_all: bool = False,
) -> tuple[dict[int, np.ndarray], list[str | None], list[int], dict[int, tuple[str, str]]]:
    """Split images into cache hits and work to do.

    Images without a known content hash are decoded once to compute it (only when there is a cache to ask, or
    ``hash_all`` asks for every hash, as feature tables do).
    Returns the hits by index, the hashes, the indices still to compute, and images that could not be decoded.
    """
    hashes: list[str | None] = list(content_hashes) if content_hashes is not None else [None] * len(sources)
    damaged_before = cache.damaged if cache is not None else 0
    hits: dict[int, np.ndarray] = {}
    todo: list[int] = []
    errors: dict[int, tuple[str, str]] = {}
    for i in range(len(sources)):
        if hashes[i] is None and (cache is not None or hash_all):
            try:
                hashes[i] = content_hash(_decode(sources[i], None))
            except ImageRejected as exc:
                errors[i] = (exc.reason, exc.detail)
                continue
        hit = cache.get(hashes[i]) if cache is not None and hashes[i] is not None else None
        if hit is not None and valid(hit):
            hits[i] = hit
        else:
            todo.append(i)
    if cache is not None and cache.damaged > damaged_before:
        warnings.warn(
            f"feature cache {cache.dir}: {cache.damaged - damaged_before} damaged entries (bad checksum) were dropped "
            "and are recomputed",
            RuntimeWarning,
            stacklevel=3,
        )
    return hits, hashes, todo, errors


def default_num_workers() -> int:
    """Decoding processes for the DataLoader.

    On 2 cores a decoding process competes with the two threads of the forward pass, and decoding in the main
    process between batches measured faster (BENCHMARKS.md); larger machines get worker processes.
    """
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, max(1, n // 4))


def featurize(
    sources: Sequence[Any],
    backbone: Backbone,
    *,
    pool: str = "avg",
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    decode_device: str | None = None,
    hash_all: bool = False,
) -> FeatureResult:
    """Compute (or fetch from the cache) one feature vector per image.

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A built backbone (:func:`transferlab.backbones.create_backbone`).
    pool
        ``"avg"`` (global average of the final feature map) or ``"flatten"`` (the seed's head input).
    content_hashes
        Pixel hashes from intake, when known; otherwise images are decoded once to compute them.
    cache
        Feature cache for this backbone/pool, or None to compute everything.
    batch_size
        Forward batch size (None: 32 on the CPU; on a GPU, the largest that fits half the free memory).
    num_workers
        Decoding processes (None: :func:`default_num_workers`). With none (the default on 2 cores), the CPU runs
        batches side by side in threads, decode and forward in each (:func:`cpu_lanes`); peak memory then holds
        one batch's activations per lane.
    progress
        Called with the number of images finished after each batch.
    decode_device
        Where JPEGs are decoded: ``"loader"`` on the CPU in the data loader (decode workers); a device name
        (``"cuda"``, ``"cpu"``) decodes raw JPEG bytes there in batches (nvJPEG on a GPU). None: the backbone's
        device when that is a GPU, else ``"loader"``.
    hash_all
        Compute every image's content hash even without a cache (returned in ``content_hashes``).

    Returns
    -------
    FeatureResult
    """
    tune_allocator()
    damaged_before = cache.damaged if cache is not None else 0
    n = len(sources)
    dim = int(np.prod(backbone.cfg.feature_shape)) if pool == "flatten" else backbone.cfg.feature_shape[0]
    feats = np.full((n, dim), np.nan, dtype=np.float32)
    hits, hashes, todo, errors = _cache_lookup(
        sources, content_hashes, cache, lambda a: a.shape == (dim,), hash_all=hash_all
    )
    for i, hit in hits.items():
        feats[i] = hit
    n_cached = len(hits)
    if progress is not None and n_cached + len(errors):
        progress(n_cached + len(errors))
    n_damaged = cache.damaged - damaged_before if cache is not None else 0
    if not todo:
        return FeatureResult(feats, errors, n_cached, 0, n_damaged=n_damaged, content_hashes=hashes)

    import torch  # only now: a run served entirely from the cache never imports torch

    on_gpu = backbone.device.type == "cuda"
    if decode_device is None:
        decode_device = str(backbone.device) if on_gpu else "loader"
    if batch_size is None:
        batch_size = auto_batch_size(backbone, pool) if on_gpu else 32
    raw = decode_device != "loader"
    dataset = (_RawJpegDataset if raw else _ImageDataset)(sources, todo, backbone.transform, backbone.draft_size)
    workers = default_num_workers() if num_workers is None else num_workers
    workers = min(workers, max(0, (len(todo) - 1) // batch_size))  # tiny jobs: worker start-up costs more
    lanes, per_lane = cpu_lanes(-(-len(todo) // batch_size))
    if not raw and not on_gpu and workers == 0 and lanes > 1:
        batches = _lane_batches(dataset, batch_size, backbone, pool, lanes, per_lane)
    else:
        loader = torch.utils.data.DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate_raw if raw else _collate,
            pin_memory=on_gpu and not raw,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        pixels = (_device_batch(b, decode_device, backbone) for b in loader) if raw else iter(loader)
        batches = (_forwarded(backbone, pool, *b) for b in pixels)
    n_computed = 0
    for idx, out, bad in batches:
        for i, reason, detail in bad:
            errors[i] = (reason, detail)
        if out is not None:
            for row, i in enumerate(idx):
                feats[i] = out[row]
                if cache is not None and hashes[i] is not None:
                    cache.put(hashes[i], out[row])
            n_computed += len(idx)
        if progress is not None:
            progress(len(idx) + len(bad))
    return FeatureResult(feats, errors, n_cached, n_computed, n_damaged=n_damaged, content_hashes=hashes)


_Batch = tuple[list[int], "np.ndarray | None", list[tuple[int, str, str]]]


def _forwarded(
    backbone: Any, pool: str, idx: list[int], x: torch.Tensor | None, bad: list[tuple[int, str, str]]
) -> _Batch:
    """One ``(indices, pixels, errors)`` batch → ``(indices, features, errors)``, the forward pass in this thread."""
    return idx, (backbone.forward(x, pool=pool).cpu().numpy() if x is not None else None), bad


MAX_LANES = 4


def cpu_lanes(n_batches: int) -> tuple[int, int]:
    """How to split the CPU between concurrent batches: ``(lanes, torch threads per lane)``.

    On few cores, one batch at a time with every core in its forward pass leaves all but one core idle while that
    batch is decoded. Lanes instead run whole batches (decode, resize, forward) side by side in threads, each
    with ``threads // lanes`` torch threads: decoding overlaps other lanes' forward passes, and small thread teams
    lose less to synchronisation and to other processes' load. Measured on 2 cores (BENCHMARKS.md): the pipeline
    with 2 lanes × 1 thread reaches 0.84 × the forward-only ceiling, one batch at a time 0.77 ×. Each lane holds
    its own batch's activations. A single batch (a predict call) keeps one lane with every thread.
    """
    import torch

    threads = torch.get_num_threads()
    lanes = max(1, min(threads, MAX_LANES, n_batches))
    return lanes, max(1, threads // lanes)


def balanced_batches(n: int, batch_size: int, lanes: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of batches of at most ``batch_size`` items, equal to within one, a multiple of ``lanes``.

    Lanes finish together: with a short last batch, one lane idles while the other works through it (4–8% of
    a few hundred images' time on 2 cores).
    """
    count = -(-n // batch_size)
    count = min(n, -(-count // lanes) * lanes)
    bounds = [k * n // count for k in range(count + 1)] if n else [0]
    return list(itertools.pairwise(bounds))


def map_in_lanes(fn: Callable[[Any], Any], items: Sequence[Any], lanes: int, per_lane: int) -> Iterator[Any]:
    """``fn`` over ``items`` in ``lanes`` threads with ``per_lane`` torch threads each; results in order.

    ``torch.set_num_threads`` in a lane sets that thread's OpenMP/MKL team size (thread-local) and torch's default
    for threads started later; that default is restored at the end, so a call leaves no trace. An exception in a
    lane reaches the caller, and the batches not yet started are cancelled.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(
        lanes, thread_name_prefix="transferlab-lane", initializer=torch.set_num_threads, initargs=(per_lane,)
    )
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _lane_batches(
    dataset: _ImageDataset, batch_size: int, backbone: Any, pool: str, lanes: int, per_lane: int
) -> Iterator[_Batch]:
    """Batches decoded and forwarded in lanes (:func:`map_in_lanes`), balanced, in order."""
    _ = backbone.module  # build the network once, here, not in two lanes at once
    return map_in_lanes(
        lambda bounds: _forwarded(backbone, pool, *_collate([dataset[k] for k in range(*bounds)])),
        balanced_batches(len(dataset), batch_size, lanes),
        lanes,
        per_lane,
    )


def _device_batch(
    batch: list[tuple[int, Any, str]], device: Any, backbone: Any
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    """Raw-JPEG batch → ``(indices, uint8 batch on the device, errors)``."""
    import torch

    bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
    jpegs = [(i, t[1], t[2]) for i, t, _ in batch if not isinstance(t, str) and t[0] == "jpeg"]
    pixels = [(i, t[1].to(device, non_blocking=True)) for i, t, _ in batch if not isinstance(t, str) and t[0] != "jpeg"]
    good, failed = _decode_on_device(jpegs, device, backbone.transform) if jpegs else ([], [])
    good += pixels
    return [i for i, _ in good], (torch.stack([t for _, t in good]) if good else None), bad + failed


def auto_batch_size(backbone: Any, pool: str = "avg", fraction: float = 0.5, limit: int = 1024) -> int:
    """Largest power-of-two batch whose forward pass fits in ``fraction`` of the GPU's free memory.

    Measured, not guessed: one forward pass at batch 8 gives the memory one image needs (activations, bf16), which
    scales linearly with the batch. CPU backbones get 32 (larger batches gave nothing on CPU here).
    """
    import torch

    if backbone.device.type != "cuda":
        return 32
    probe = 8
    size = backbone.cfg.input_size
    x = torch.zeros((probe, size[1], size[2], 3), dtype=torch.uint8, device=backbone.device)
    torch.cuda.synchronize(backbone.device)
    torch.cuda.reset_peak_memory_stats(backbone.device)
    base = torch.cuda.memory_allocated(backbone.device)
    backbone.forward(x, pool=pool)
    torch.cuda.synchronize(backbone.device)
    per_image = max(1, (torch.cuda.max_memory_allocated(backbone.device) - base) / probe)
    free, _ = torch.cuda.mem_get_info(backbone.device)
    n = int(fraction * free / per_image)
    return max(8, min(limit, 1 << max(3, n.bit_length() - 1)))


def open_cache(
    backbone: Backbone, pool: str, cache_dir: str | os.PathLike[str] | None, use_cache: bool
) -> FeatureCache | None:
    """The feature cache for a backbone and pooling, or None when caching is off."""
    if not use_cache:
        return None
    from .cache import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return FeatureCache(root, feature_spec(backbone, pool))
    except OSError as exc:
        from .errors import TransferlabError

        raise TransferlabError(
            f"--cache-dir {root}: cannot write there ({exc.strerror}); pass another --cache-dir or --no-cache"
        ) from None


@dataclass
class FaceFeatureResult:
    """Per image, its face rows (:mod:`transferlab.faces` layout), or an entry in ``errors``."""

    faces: list[np.ndarray | None]
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0
    content_hashes: list[str | None] = field(default_factory=list)


FACE_DECODE_DRAFT = (1280, 1280)  # big camera JPEGs are decoded at reduced scale; faces keep plenty of pixels


def featurize_faces(
    sources: Sequence[Any],
    backbone: Any,
    *,
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    progress: Callable[[int], None] | None = None,
    hash_all: bool = False,
) -> FaceFeatureResult:
    """Detect, align and embed every face of every image (or fetch the rows from the cache).

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A face backbone (:class:`transferlab.faces.FaceBackbone`).
    content_hashes, cache, progress, hash_all
        As for :func:`featurize`.

    Returns
    -------
    FaceFeatureResult
        An image without a face has an empty ``(0, D + 15)`` array, not an error: the caller decides the policy.
    """

    width = backbone.cfg.feature_shape[0] + 15
    out: list[np.ndarray | None] = [None] * len(sources)
    hits, hashes, todo, errors = _cache_lookup(
        sources, content_hashes, cache, lambda a: a.ndim == 2 and a.shape[1] == width, hash_all=hash_all
    )
    for i, hit in hits.items():
        out[i] = hit
    n_cached = len(hits)
    if progress is not None and n_cached + len(errors):
        progress(n_cached + len(errors))
    for i, result in _face_rows(backbone, sources, todo):
        if isinstance(result, tuple):
            errors[i] = result
        else:
            out[i] = result
            if cache is not None and hashes[i] is not None:
                cache.put(hashes[i], result)
        if progress is not None:
            progress(1)
    n_computed = len(todo) - sum(1 for i in todo if i in errors)
    return FaceFeatureResult(out, errors, n_cached, n_computed, hashes)


def featurize_any(
    sources: Sequence[Any],
    backbone: Any,
    *,
    pool: str = "avg",
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    hash_all: bool = False,
) -> FeatureResult | FaceFeatureResult:
    """The featurize stage for any backbone: :func:`featurize_faces` for face backbones, else :func:`featurize`."""
    if backbone.cfg.family == "face":
        return featurize_faces(
            sources, backbone, content_hashes=content_hashes, cache=cache, progress=progress, hash_all=hash_all
        )
    return featurize(
        sources,
        backbone,
        pool=pool,
        content_hashes=content_hashes,
        cache=cache,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        hash_all=hash_all,
    )


def _faces_of(model: Any, src: Any) -> Any:
    """Face rows of one image, or ``(reason, detail)`` when it cannot be used."""
    import numpy as np

    try:
        return model.faces(np.asarray(_decode(src, FACE_DECODE_DRAFT)))
    except ImageRejected as exc:
        return (exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return ("unreadable", f"{type(exc).__name__}: {exc}")


_WORKER_MODEL: Any = None


def _worker_init(embedder: str) -> None:
    global _WORKER_MODEL
    import cv2

    from .faces import FaceModel

    cv2.setNumThreads(1)
    _WORKER_MODEL = FaceModel(embedder)


def _worker_faces(item: tuple[int, Any]) -> tuple[int, Any]:
    return item[0], _faces_of(_WORKER_MODEL, item[1])


def _face_rows(backbone: Any, sources: Sequence[Any], todo: list[int]) -> Any:
    """Yield ``(index, rows or (reason, detail))`` for the images to compute, in order.

    Embedders that run on one core (dlib: measured 1.00 CPU-seconds per second, and it holds the GIL, so threads
    do not help) are spread over processes; OpenCV's SFace already uses every core and runs in-process.
    """
    workers = min(os.cpu_count() or 1, 4)
    if backbone.cfg.extra.get("single_threaded") and workers > 1 and len(todo) >= 8:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenCV/OpenMP threads hold locks deadlocks the children.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(backbone.cfg.extra["embedder"],)) as pool:
            yield from pool.imap(_worker_faces, ((i, sources[i]) for i in todo), chunksize=2)
        return
    for i in todo:
        yield i, _faces_of(backbone.module, sources[i])
