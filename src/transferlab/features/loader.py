"""Reading and decoding batches on the CPU: a map-style dataset for DataLoader workers, and lanes (batches run side
by side in threads) for machines with few cores."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..decode import ImageRejected, decode_pixels

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAX_LANES = 4

# A batch on its way through the stage: (image indices, pixels or features, [(index, reason, detail)] errors).
Batch = tuple[list[int], Any, list[tuple[int, str, str]]]


class ImageDataset:
    """Map-style dataset: index → ``(index, tensor, "")`` or ``(index, reason, detail)``. Runs in DataLoader
    workers or lanes; one bad file never stops a batch."""

    def __init__(
        self, sources: Sequence[Any], indices: Sequence[int], transform: Callable[..., Any], draft: tuple[int, int]
    ) -> None:
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


def collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    """Dataset items → ``(indices, stacked pixels or None, errors)``."""
    import torch

    good = [(i, t) for i, t, _ in batch if not isinstance(t, str)]
    bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, bad


def default_num_workers(feeding_gpu: bool = False) -> int:
    """Decoding processes for the DataLoader.

    On 2 cores a decoding process competes with the two threads of the forward pass, and decoding in the main
    process between batches measured faster (BENCHMARKS.md); larger machines get worker processes. When the CPU
    decodes for a GPU (the portable recipe), decoding is all the CPU does and the GPU waits for it: every core but
    one (for this process) decodes.
    """
    n = os.cpu_count() or 1
    if feeding_gpu:
        return max(1, n - 1)
    return 0 if n <= 2 else min(8, max(1, n // 4))


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

    Examples
    --------
    >>> balanced_batches(10, 4, 2)
    [(0, 2), (2, 5), (5, 7), (7, 10)]
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


def forwarded(
    backbone: Any, pool: str, idx: list[int], x: torch.Tensor | None, bad: list[tuple[int, str, str]]
) -> Batch:
    """One ``(indices, pixels, errors)`` batch → ``(indices, features, errors)``, the forward pass in this thread."""
    return idx, (backbone.forward(x, pool=pool).cpu().numpy() if x is not None else None), bad


def lane_batches(
    dataset: ImageDataset, batch_size: int, backbone: Any, pool: str, lanes: int, per_lane: int
) -> Iterator[Batch]:
    """Batches decoded and forwarded in lanes (:func:`map_in_lanes`), balanced, in order."""
    _ = backbone.module  # build the network once, here, not in two lanes at once
    return map_in_lanes(
        lambda bounds: forwarded(backbone, pool, *collate([dataset[k] for k in range(*bounds)])),
        balanced_batches(len(dataset), batch_size, lanes),
        lanes,
        per_lane,
    )


__all__ = [
    "MAX_LANES",
    "Batch",
    "ImageDataset",
    "balanced_batches",
    "collate",
    "cpu_lanes",
    "default_num_workers",
    "forwarded",
    "lane_batches",
    "map_in_lanes",
]
