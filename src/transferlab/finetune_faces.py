"""Fine-tuning the top of the face embedder (``--finetune N`` with ``sface``), its frozen trunk computed once.

SFace runs as a torch module (the shipped ONNX graph converted by onnx2torch), a chain of blocks (the registry's
``blocks``). Each training photo contributes the face that carries its label (the multiple-instance choice of a
frozen model, made by the pipeline). The face is aligned as the pipeline aligns it, the trunk's activation map
entering the top N blocks is computed once for it and for its mirror image, and only the top blocks train, with a
normalised-softmax layer over the classes (initialised at the class means): AdamW, warm-up then cosine decay, label
smoothing, batch-norm statistics frozen, early stopping on a stratified validation part. The configured head and
the open set are then fitted on the tuned embeddings, as for the frozen embedder.

Measured on the bundled photos (``benchmarks/finetune_faces.py``, BENCHMARKS.md), this overfits: the most probable
class stays as good, but held-out faces drift from their classes and more known people are answered ``unknown``.
It is offered for users with many photos per person; measure with ``transferlab evaluate`` before relying on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._progress import Reporter
from .backbones import FaceBackbone, face_landmarks, split_blocks
from .backbones.face_align import similarity_transforms, warp_faces_remap
from .backbones.face_graphs import split_chain, torch_module
from .decode import decode_pixels
from .errors import TransferlabError
from .finetune import (
    FinetuneConfig,
    FinetuneResult,
    descend,
    lr_schedule,
    run_epochs,
    scored,
    top_tensors,
    validation_split,
)

SCALE = 16.0  # logit scale of the normalised softmax (cosines are in [-1, 1])


def _aligned(backbone: FaceBackbone, sources: Sequence[Any], faces: Sequence[np.ndarray]) -> Any:
    """Each photo's chosen face aligned to 112×112, as the pipeline aligns it: ``(n, 3, 112, 112)`` float."""
    import torch

    crops = [
        warp_faces_remap(decode_pixels(src, backbone.draft_size), similarity_transforms(face_landmarks(row[None])))
        for src, row in zip(sources, faces, strict=True)
    ]
    return torch.cat(crops)


def _trunk(
    backbone: FaceBackbone,
    sources: Sequence[Any],
    faces: Sequence[np.ndarray],
    config: FinetuneConfig,
    reporter: Reporter,
) -> tuple[Any, list[str], Any, Any, Any]:
    """The embedder as a torch module, the state-dict prefixes of its top blocks, the top as a module, and the
    activation maps entering it for every aligned face and for its mirror image (computed once)."""
    import torch

    cfg = backbone.cfg
    device = torch.device(backbone.device)
    module = torch_module(backbone.pipeline.graphs["embedder"]).float().to(device)
    _, prefixes = split_blocks(cfg, module, config.blocks)
    end, top = split_chain(module, prefixes[0].rstrip("."))
    x = _aligned(backbone, sources, faces)
    maps: list[Any] = []
    hook = module.get_submodule(end).register_forward_hook(lambda m, i, o: maps.append(o.detach()))
    with torch.no_grad(), reporter.task("trunk", 2 * len(x)) as advance:
        for crops in (x, x.flip(-1)):  # each face and its mirror image
            for s in range(0, len(crops), 128):
                module(crops[s : s + 128].to(device))
                advance(len(crops[s : s + 128]))
    hook.remove()
    return module, prefixes, top, torch.cat(maps[: len(maps) // 2]), torch.cat(maps[len(maps) // 2 :])


def finetune_face_embedder(
    backbone: FaceBackbone,
    sources: Sequence[Any],
    faces: Sequence[np.ndarray],
    labels: Sequence[str],
    config: FinetuneConfig,
    *,
    reporter: Reporter | None = None,
) -> FinetuneResult:
    """Train the last ``config.blocks`` blocks of ``backbone``'s embedder on one face per photo.

    Parameters
    ----------
    backbone
        A face backbone whose embedder is a torch module (``sface``); it is not modified (see
        :meth:`FaceBackbone.tune`).
    sources, faces, labels
        The training photos, the row (from the frozen pipeline) of the face that carries each photo's label, and the
        labels.
    config
        How to train (``copies`` is unused: each face's one augmented copy is its mirror image).
    reporter
        Progress bar over the epochs and one status line per epoch.

    Returns
    -------
    FinetuneResult
        ``state`` names tensors as in the converted embedder's state dict.
    """
    import torch
    from torch import nn

    reporter = reporter or Reporter(False)
    cfg = backbone.cfg
    if cfg.blocks is None:
        raise TransferlabError(f"--finetune: backbone {cfg.name!r} cannot be fine-tuned")
    t0 = time.perf_counter()
    device = torch.device(backbone.device)
    module, prefixes, top, X, X_flip = _trunk(backbone, sources, faces, config, reporter)
    n = len(X)
    t_trunk = time.perf_counter() - t0

    t1 = time.perf_counter()
    torch.manual_seed(config.seed)
    y_all = np.asarray(labels).astype(str)
    classes, y_idx = np.unique(y_all, return_inverse=True)
    fit_rows, val_rows = validation_split(y_idx, config.validation, config.seed)
    y_t = torch.from_numpy(y_idx.astype(np.int64)).to(device)
    module.requires_grad_(False)
    params = [p for k, p in module.named_parameters() if k.startswith(tuple(prefixes))]
    for p in params:
        p.requires_grad_(True)
    top.eval()  # batch norm keeps its statistics; its affine parameters still train
    with torch.no_grad():
        emb = nn.functional.normalize(top(X[fit_rows]), dim=1)
        means = torch.stack([emb[y_t[fit_rows] == k].mean(0) for k in range(len(classes))])
    weight = nn.Parameter(nn.functional.normalize(means, dim=1))
    opt = torch.optim.AdamW(
        [
            {"params": params, "lr": config.lr * config.block_lr_scale, "weight_decay": config.weight_decay},
            {"params": [weight], "lr": config.lr, "weight_decay": 0.0},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config, len(fit_rows)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def logits(maps_: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            e = nn.functional.normalize(top(maps_).float(), dim=1)
        return SCALE * e @ nn.functional.normalize(weight, dim=1).T

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            return scored(logits(X[val_rows]), y_t[val_rows])

    def step(batch: np.ndarray, rng: np.random.Generator) -> tuple[float, int]:
        rows = torch.from_numpy(fit_rows[batch])
        mirror = torch.from_numpy(rng.random(len(rows)) < 0.5).to(device)  # the face or its mirror image
        out = logits(torch.where(mirror[:, None, None, None], X_flip[rows], X[rows]))
        return descend(opt, sched, loss_fn(out, y_t[rows]), out, y_t[rows])

    history, best_epoch, state = run_epochs(
        config,
        len(fit_rows),
        step,
        evaluate if len(val_rows) else None,
        lambda: top_tensors(module, prefixes),
        reporter,
    )
    return FinetuneResult(
        state=state,
        history=history,
        best_epoch=best_epoch,
        trunk={"computed": 2 * n, "cached": 0},
        seconds={"trunk": t_trunk, "epochs": time.perf_counter() - t1},
    )
