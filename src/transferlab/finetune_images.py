"""Fine-tuning the top of a whole-image backbone (``--finetune N``), with its frozen trunk computed once.

The network is cut before its last N blocks (the registry says where each architecture's blocks are). The trunk's
output, the activation map entering those blocks, is treated like any feature: computed once per photo and per
augmented copy (the seed's seven augmentations, :mod:`transferlab.augment`), cached by content hash, and read back
every epoch. An epoch then runs only the N unfrozen blocks and a linear layer, not the whole network, which is what
makes fine-tuning cost about as much as featurizing once (BENCHMARKS.md). The linear layer only serves the training;
the configured head (``logreg``, ``svm``, ``mlp``) is fitted afterwards on the features of the fine-tuned network, as
for a frozen one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write_bytes
from ._progress import Reporter
from .augment import AugmentConfig, AugmentedImages
from .backbones import ImageBackbone, TrunkBackbone, split_blocks
from .errors import TransferlabError
from .features import extract, feature_spec, open_cache
from .finetune import (
    FINETUNE_VERSION,
    FinetuneConfig,
    FinetuneResult,
    descend,
    lr_schedule,
    run_epochs,
    scored,
    top_tensors,
    validation_split,
)


def _maps(res: Any, shape: tuple[int, int, int], rows: Sequence[int]) -> np.ndarray:
    """Trunk rows (flattened channels-last) → ``(n, C, h, w)`` float32."""
    c, h, w = shape
    flat = np.stack([res.bags[i][0] for i in rows]).astype(np.float32, copy=False)
    return np.ascontiguousarray(flat.reshape(len(rows), h, w, c).transpose(0, 3, 1, 2))


def _tuned_key(
    trunk: TrunkBackbone, config: FinetuneConfig, hashes: Sequence[str | None] | None, y: np.ndarray
) -> str | None:
    """What determines a fine-tuning's result: the trunk's recipe, the parameters, and the photos (content hashes,
    in order) with their labels. None when a photo's content hash is unknown (nothing is then cached)."""
    if hashes is None or any(not isinstance(h, str) for h in hashes):
        return None
    blob = json.dumps(
        {
            "version": FINETUNE_VERSION,
            "trunk": feature_spec(trunk, "flatten"),
            "config": asdict(config),
            "photos": [list(p) for p in zip(hashes, y.tolist(), strict=True)],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _load_tuned(path: Path) -> FinetuneResult | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            info = json.loads((f.metadata() or {})["result"])
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, KeyError, ValueError):
        return None  # missing or damaged: train again (and overwrite it)
    return FinetuneResult(state, info["history"], info["best_epoch"], {"computed": 0, "cached": 0}, reused=True)


def _save_tuned(path: Path, result: FinetuneResult) -> None:
    from safetensors.numpy import save

    meta = {"result": json.dumps({"history": result.history, "best_epoch": result.best_epoch})}
    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in result.state.items()}, metadata=meta))


def _trunk_maps(
    trunk: TrunkBackbone,
    items: Sequence[Any],
    keys: Sequence[str | None] | None,
    cache: Any,
    label: str,
    reporter: Reporter,
    batch_size: int | None,
    num_workers: int | None,
) -> Any:
    """The trunk's activation maps for ``items`` (photos or augmented copies), flattened, through the cache."""
    with reporter.task(label, len(items)) as advance:
        return extract(
            trunk, items, pool="flatten", content_hashes=keys, cache=cache, batch_size=batch_size,
            num_workers=num_workers, progress=advance,
        )  # fmt: skip


def prepare_trunk(
    backbone: ImageBackbone,
    sources: Sequence[Any],
    content_hashes: Sequence[str],
    config: FinetuneConfig,
    *,
    cache_dir: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    reporter: Reporter | None = None,
) -> dict[str, int]:
    """Compute and cache the trunk maps of photos and of all their augmented copies, ahead of fine-tuning runs
    (a study's seeds each fine-tune on a subset of them). Returns the counts ``computed`` and ``cached``."""
    reporter = reporter or Reporter(False)
    trunk = TrunkBackbone(backbone, config.blocks)
    cache = open_cache(trunk, "flatten", cache_dir, True)
    aug = AugmentedImages(list(sources), list(content_hashes), AugmentConfig(config.copies))
    counts = {"computed": 0, "cached": 0}
    for label, items, keys in (("trunk", sources, content_hashes), ("augmented", aug, aug.keys())):
        res = _trunk_maps(trunk, items, keys, cache, label, reporter, batch_size, num_workers)
        counts["computed"] += res.n_computed
        counts["cached"] += res.n_cached
    return counts


@dataclass
class _TrainingMaps:
    """The trunk's activation maps of the training photos and of their augmented copies, as fine-tuning reads them."""

    X: Any  # (n, C, h, w) maps of the usable photos
    X_aug: Any  # maps of the usable augmented copies
    versions: list[list[tuple[int, int]]]  # per training photo: (0, row of X) and (1, row of X_aug) per copy
    y: np.ndarray  # class index per usable photo
    classes: np.ndarray
    fit_rows: np.ndarray  # rows of X trained on
    val_rows: np.ndarray  # rows of X held out for early stopping
    counts: dict[str, int]  # maps computed and read from the cache


def _training_maps(
    trunk: TrunkBackbone,
    sources: Sequence[Any],
    content_hashes: Sequence[str | None] | None,
    y_all: np.ndarray,
    config: FinetuneConfig,
    cache: Any,
    reporter: Reporter,
    batch_size: int | None,
    num_workers: int | None,
) -> _TrainingMaps:
    """The trunk maps of the photos and of the training side's augmented copies (cached), and the split of the
    photos into training and validation rows."""
    import torch

    res = _trunk_maps(trunk, sources, content_hashes, cache, "trunk", reporter, batch_size, num_workers)
    ok = [i for i in range(len(sources)) if i not in res.errors]
    if not ok:
        raise TransferlabError("fine-tuning: no usable training images (all were skipped)")
    classes, y_ok = np.unique(y_all[ok], return_inverse=True)
    fit_rows, val_rows = validation_split(y_ok, config.validation, config.seed)
    hashes = [res.content_hashes[i] if res.content_hashes and res.content_hashes[i] else f"photo-{i}" for i in ok]
    fit_idx = [ok[j] for j in fit_rows]
    aug = AugmentedImages([sources[i] for i in fit_idx], [hashes[j] for j in fit_rows], AugmentConfig(config.copies))
    res_aug = _trunk_maps(trunk, aug, aug.keys(), cache, "augmented", reporter, batch_size, num_workers)
    shape = trunk.map_shape
    X = torch.from_numpy(_maps(res, shape, ok))
    # versions[j] lists the rows of X / X_aug holding photo fit_rows[j] and its augmented copies
    aug_ok = [k for k in range(len(aug)) if k not in res_aug.errors]
    X_aug = torch.from_numpy(_maps(res_aug, shape, aug_ok)) if aug_ok else X[:0]
    where = {k: n for n, k in enumerate(aug_ok)}
    copies = [
        [where[k] for k in range(j * config.copies, (j + 1) * config.copies) if k in where]
        for j in range(len(fit_rows))
    ]
    versions = [[(0, int(r))] + [(1, k) for k in copies[j]] for j, r in enumerate(fit_rows)]
    counts = {"computed": res.n_computed + res_aug.n_computed, "cached": res.n_cached + res_aug.n_cached}
    return _TrainingMaps(X, X_aug, versions, y_ok, classes, fit_rows, val_rows, counts)


def _train_top(
    backbone: ImageBackbone, maps: _TrainingMaps, config: FinetuneConfig, reporter: Reporter
) -> tuple[list[dict[str, float]], int, dict[str, Any]]:
    """Train the network's last ``config.blocks`` blocks and a linear layer on the trunk maps: AdamW, warm-up and
    cosine decay, label smoothing, each step on a photo or one of its augmented copies; returns the history, the
    best epoch and the top blocks' tensors at it."""
    import torch
    from torch import nn

    cfg = backbone.cfg
    X, X_aug, versions, y_ok, fit_rows, val_rows = (
        maps.X,
        maps.X_aug,
        maps.versions,
        maps.y,
        maps.fit_rows,
        maps.val_rows,
    )
    torch.manual_seed(config.seed)
    full = cfg.build(backbone.weights_file).eval()
    blocks, prefixes = split_blocks(cfg, full, config.blocks)
    top = nn.Sequential(*blocks[-config.blocks :])
    full.requires_grad_(False)
    top.requires_grad_(True)
    with torch.no_grad():
        width = int(top(X[:1]).shape[1])
    linear = nn.Linear(width, len(maps.classes))
    device = backbone.device  # the trunk maps were made there; on a GPU the epochs run there too, in bf16 autocast
    top.to(device)
    linear.to(device)
    decay, no_decay = [], []
    for p in top.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "lr": config.lr * config.block_lr_scale, "weight_decay": config.weight_decay},
            {"params": no_decay, "lr": config.lr * config.block_lr_scale, "weight_decay": 0.0},
            {"params": linear.parameters(), "lr": config.lr, "weight_decay": config.weight_decay},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config, len(versions)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    y_t = torch.from_numpy(y_ok.astype(np.int64))

    def logits(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return linear(top(x).mean(dim=(2, 3))).float()

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            out = torch.cat([logits(X[val_rows[s : s + 256]]) for s in range(0, len(val_rows), 256)])
            return scored(out, y_t[val_rows].to(device))

    def step(batch: np.ndarray, rng: np.random.Generator) -> tuple[float, int]:
        picks = [versions[j][rng.integers(len(versions[j]))] for j in batch]  # the photo or one of its copies
        xb = torch.stack([X[r] if src == 0 else X_aug[r] for src, r in picks])
        yb = y_t[fit_rows[batch]].to(device)
        out = logits(xb)
        return descend(opt, sched, loss_fn(out, yb), out, yb)

    top.eval()  # batch norm uses its pretrained statistics; gradients still flow through its affine parameters
    history, best_epoch, state = run_epochs(
        config,
        len(versions),
        step,
        evaluate if len(val_rows) else None,
        lambda: top_tensors(full, prefixes),
        reporter,
    )
    return history, best_epoch, state


def finetune(
    backbone: ImageBackbone,
    sources: Sequence[Any],
    content_hashes: Sequence[str | None] | None,
    labels: Sequence[str],
    config: FinetuneConfig,
    *,
    cache_dir: Any = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    reporter: Reporter | None = None,
) -> FinetuneResult:
    """Train the last ``config.blocks`` blocks of ``backbone`` (and a linear layer) on labelled photos.

    Parameters
    ----------
    backbone
        A built whole-image backbone with pretrained weights; it is not modified (see :meth:`ImageBackbone.tune`).
    sources, content_hashes, labels
        The training photos (paths, bytes or PIL images), their content hashes where known, and their labels.
        Photos that cannot be decoded are skipped, as in featurizing.
    config
        How to train.
    cache_dir, use_cache, batch_size, num_workers
        As for featurizing: where the trunk maps are cached, and how they are computed.
    reporter
        Progress bar over the epochs and one status line per epoch.

    Returns
    -------
    FinetuneResult
    """
    reporter = reporter or Reporter(False)
    y_all = np.asarray(labels).astype(str)
    t0 = time.perf_counter()
    trunk = TrunkBackbone(backbone, config.blocks)
    cache = open_cache(trunk, "flatten", cache_dir, use_cache)
    key = _tuned_key(trunk, config, content_hashes, y_all) if cache is not None else None
    stored = cache.root / "finetuned" / f"{key}.safetensors" if cache is not None and key else None
    if stored is not None and (found := _load_tuned(stored)) is not None:
        reporter.info(f"fine-tuning: the same run's tuned blocks are in the cache ({stored.name}); nothing to train")
        found.seconds = {"trunk": 0.0, "epochs": 0.0, "reused": time.perf_counter() - t0}
        return found
    maps = _training_maps(trunk, sources, content_hashes, y_all, config, cache, reporter, batch_size, num_workers)
    t_trunk = time.perf_counter() - t0
    t1 = time.perf_counter()
    history, best_epoch, state = _train_top(backbone, maps, config, reporter)
    result = FinetuneResult(
        state=state,
        history=history,
        best_epoch=best_epoch,
        trunk=maps.counts,
        seconds={"trunk": t_trunk, "epochs": time.perf_counter() - t1},
    )
    if stored is not None:  # a rerun (or the study's other heads) with the same photos and parameters reuses it
        _save_tuned(stored, result)
    return result
