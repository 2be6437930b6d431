"""Fine-tuning the top of a whole-image backbone (``--finetune N``), with its frozen trunk computed once.

The network is cut before its last N blocks (the registry says where each architecture's blocks are). The trunk's
output, the activation map entering those blocks, is treated like any feature: computed once per photo and per
augmented copy (the seed's seven augmentations, :mod:`transferlab.augment`), cached by content hash, and read back
every epoch. An epoch then runs only the N unfrozen blocks and a linear layer, not the whole network, which is what
makes fine-tuning cost about as much as featurizing once (BENCHMARKS.md).

Training: AdamW with weight decay, a linear warm-up then cosine decay, label smoothing, batch norm statistics kept
frozen (small batches of a few hundred photos would only add noise to them), early stopping on a stratified
validation part carved from the training photos, and the weights of the best validation epoch. The linear layer
only serves the training; the configured head (``logreg``, ``svm``, ``mlp``) is fitted afterwards on the features of
the fine-tuned network, as for a frozen one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write_bytes
from ._progress import Reporter
from .augment import AugmentConfig, AugmentedImages
from .backbones import ImageBackbone, TrunkBackbone, split_blocks
from .errors import TransferlabError
from .features import extract, feature_spec, open_cache

# Bump when training changes (loop, schedule, split), so cached fine-tunings from older code are never reused.
FINETUNE_VERSION = "1"


@dataclass(frozen=True)
class FinetuneConfig:
    """How the top blocks are trained (``finetune_params`` / ``--finetune-param`` set any of these but ``blocks``).

    Attributes
    ----------
    blocks
        How many blocks at the top of the network are trained (the rest stays frozen).
    epochs
        At most this many epochs; early stopping usually ends sooner.
    lr, block_lr_scale
        AdamW's learning rate for the linear layer; the unfrozen blocks get ``lr * block_lr_scale``.
    weight_decay, label_smoothing
        AdamW's decoupled weight decay; cross-entropy label smoothing.
    warmup_epochs
        Linear warm-up of the learning rate, then cosine decay to zero at ``epochs``.
    patience
        Stop after this many epochs without a better validation loss; the best epoch's weights are kept.
    validation
        Share of the training photos (stratified) held out for early stopping; none with under 20 photos or a
        class with a single photo (then every epoch runs).
    batch_size
        Photos per step.
    copies
        Augmented copies per training photo (each epoch draws one of the photo and its copies).
    seed
        Seeds the split, the draws, the order and the linear layer's initialisation.
    """

    blocks: int
    epochs: int = 15
    lr: float = 3e-3
    block_lr_scale: float = 0.1
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    patience: int = 3
    validation: float = 0.15
    batch_size: int = 32
    copies: int = 2
    seed: int = 0

    @classmethod
    def from_params(cls, blocks: int, params: dict[str, Any] | None) -> FinetuneConfig:
        """A config from ``finetune_params``, with one clear line for an unknown or invalid parameter."""
        params = dict(params or {})
        allowed = [f.name for f in fields(cls) if f.name != "blocks"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TransferlabError(f"finetune parameter {unknown[0]!r}: choose from {', '.join(allowed)}")
        try:
            cfg = cls(blocks=blocks, **{k: type(getattr(cls, k))(v) for k, v in params.items()})
        except (TypeError, ValueError) as exc:
            raise TransferlabError(f"finetune parameters {params}: {exc}") from None
        for name in ("epochs", "batch_size", "copies"):
            if getattr(cfg, name) < 1:
                raise TransferlabError(f"finetune parameter {name} = {getattr(cfg, name)}: must be at least 1")
        if not 0.0 <= cfg.validation < 0.5:
            raise TransferlabError(f"finetune parameter validation = {cfg.validation}: must be in [0, 0.5)")
        return cfg

    def params(self) -> dict[str, Any]:
        """Every parameter but ``blocks`` (what ``model.json`` records)."""
        return {k: v for k, v in asdict(self).items() if k != "blocks"}


@dataclass
class FinetuneResult:
    """What fine-tuning gives: the trained tensors and how training went.

    Attributes
    ----------
    state
        The top blocks' tensors after the best epoch, named as in the network's state dict.
    history
        Per epoch: ``epoch``, ``train_loss``, ``train_accuracy`` and, with a validation part, ``val_loss`` and
        ``val_accuracy``.
    best_epoch
        The epoch whose weights were kept.
    trunk
        Trunk activation maps ``computed`` now and read from the ``cached`` store.
    seconds
        Wall time of the ``trunk`` maps and of the ``epochs``.
    reused
        True when the same fine-tuning (same network, photos in the same order, labels and parameters) was found in
        the cache and nothing was trained.
    """

    state: dict[str, np.ndarray]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    trunk: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def _maps(res: Any, shape: tuple[int, int, int], rows: Sequence[int]) -> np.ndarray:
    """Trunk rows (flattened channels-last) → ``(n, C, h, w)`` float32."""
    c, h, w = shape
    flat = np.stack([res.bags[i][0] for i in rows]).astype(np.float32, copy=False)
    return np.ascontiguousarray(flat.reshape(len(rows), h, w, c).transpose(0, 3, 1, 2))


def validation_split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to train on and rows for early stopping (stratified; none with under 20 rows or a single-row class)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    idx = np.arange(len(y))
    counts = np.unique(y, return_counts=True)[1]
    n_val = round(share * len(y))
    if share <= 0 or len(y) < 20 or counts.min() < 2 or n_val < len(counts):
        return idx, idx[:0]
    train, val = next(StratifiedShuffleSplit(1, test_size=n_val, random_state=seed).split(idx, y))
    return np.sort(train), np.sort(val)


def lr_schedule(config: FinetuneConfig, n_items: int) -> Any:
    """The learning-rate factor per step: linear warm-up over ``warmup_epochs``, then cosine decay to zero at
    ``epochs`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    steps_per_epoch = max(1, math.ceil(n_items / config.batch_size))
    total, warm = config.epochs * steps_per_epoch, max(1, int(config.warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return schedule


def top_tensors(module: Any, prefixes: Sequence[str]) -> dict[str, Any]:
    """A copy of the floating-point tensors of ``module``'s state under ``prefixes`` (the trained top blocks; batch
    norm's counters never change here)."""
    state = module.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(tuple(prefixes)) and v.is_floating_point()}


def descend(opt: Any, sched: Any, loss: Any, out: Any, target: Any) -> tuple[float, int]:
    """One optimiser step on a batch's ``loss``, then the schedule's: the step function every fine-tuning gives
    :func:`run_epochs`. Returns the batch's mean loss and how many of its logits ``out`` pick ``target``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach()), int((out.argmax(1) == target).sum())


def scored(out: Any, target: Any) -> tuple[float, float]:
    """Cross-entropy and accuracy of logits ``out`` against ``target`` (a validation pass's figures)."""
    import torch.nn.functional as F

    return float(F.cross_entropy(out, target)), float((out.argmax(1) == target).float().mean())


def run_epochs(
    config: FinetuneConfig,
    n_fit: int,
    step: Callable[[np.ndarray, np.random.Generator], tuple[float, int]],
    validate: Callable[[], tuple[float, float]] | None,
    snapshot: Callable[[], dict[str, Any]],
    reporter: Reporter,
) -> tuple[list[dict[str, float]], int, dict[str, np.ndarray]]:
    """The epoch loop of every fine-tuning: each epoch, ``step`` trains on shuffled batches of the ``n_fit`` training
    items (it gets the batch's indices and the random generator, and returns the batch's mean loss and correct count);
    one history row and status line per epoch; the ``snapshot`` of the best epoch is kept (lowest validation loss, or
    training loss without ``validate``); training stops after ``patience`` epochs without a better validation loss.

    Returns
    -------
    history, best_epoch, state
        The rows, the kept epoch, and its snapshot as float32 NumPy arrays.
    """
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    with reporter.task(f"fine-tune {config.blocks}", config.epochs) as advance:
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(n_fit)
            loss_sum, correct = 0.0, 0
            for s in range(0, n_fit, config.batch_size):
                batch = order[s : s + config.batch_size]
                loss, right = step(batch, rng)
                loss_sum += loss * len(batch)
                correct += right
            row = {"epoch": epoch, "train_loss": loss_sum / n_fit, "train_accuracy": correct / n_fit}
            score = row["train_loss"]
            if validate is not None:
                row["val_loss"], row["val_accuracy"] = validate()
                score = row["val_loss"]
            history.append(row)
            advance(1)
            val = f", validation loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f}" if validate else ""
            reporter.info(
                f"fine-tune epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.3f} acc "
                f"{row['train_accuracy']:.3f}{val}"
            )
            if best is None or score < best[0]:
                best = (score, epoch, snapshot())
            elif validate is not None and epoch - best[1] >= config.patience:
                break
    assert best is not None
    return history, best[1], {k: v.float().cpu().numpy().copy() for k, v in best[2].items()}


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
    import torch
    from torch import nn

    reporter = reporter or Reporter(False)
    cfg = backbone.cfg
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
    trunk_counts = {"computed": res.n_computed + res_aug.n_computed, "cached": res.n_cached + res_aug.n_cached}
    t_trunk = time.perf_counter() - t0

    t1 = time.perf_counter()
    torch.manual_seed(config.seed)
    full = cfg.build(backbone.weights_file).eval()
    blocks, prefixes = split_blocks(cfg, full, config.blocks)
    top = nn.Sequential(*blocks[-config.blocks :])
    full.requires_grad_(False)
    top.requires_grad_(True)
    with torch.no_grad():
        width = int(top(X[:1]).shape[1])
    linear = nn.Linear(width, len(classes))
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
    result = FinetuneResult(
        state=state,
        history=history,
        best_epoch=best_epoch,
        trunk=trunk_counts,
        seconds={"trunk": t_trunk, "epochs": time.perf_counter() - t1},
    )
    if stored is not None:  # a rerun (or the study's other heads) with the same photos and parameters reuses it
        _save_tuned(stored, result)
    return result
