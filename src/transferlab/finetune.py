"""Fine-tuning, what both kinds of network share: how it is configured (:class:`FinetuneConfig`), what it returns
(:class:`FinetuneResult`), and the training loop (validation split, learning-rate schedule, one optimiser step, the
epochs with early stopping). :mod:`.finetune_images` fine-tunes a whole-image network's top blocks on cached trunk
maps; :mod:`.finetune_faces` the face embedder's.

Training: AdamW with weight decay, a linear warm-up then cosine decay, label smoothing, batch norm statistics kept
frozen (small batches of a few hundred photos would only add noise to them), early stopping on a stratified
validation part carved from the training photos, and the weights of the best validation epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ._progress import Reporter
from .errors import TransferlabError

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
