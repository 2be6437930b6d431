"""Face detection's arithmetic around YuNet: the detector's input size, and its outputs decoded into face rows
(score threshold and non-maximum suppression, as OpenCV's ``FaceDetectorYN`` does)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

DETECTOR_MAX_SIDE = 640
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3


def detector_size(height: int, width: int) -> tuple[float, int, int]:
    """``(scale, h, w)``: photos are shrunk (never enlarged) so the longer side is at most 640 px."""
    scale = min(1.0, DETECTOR_MAX_SIDE / max(height, width))
    return scale, (height if scale == 1.0 else round(height * scale)), (width if scale == 1.0 else round(width * scale))


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression within each group, best score first: a box is
    dropped when its IoU with a better kept box of its group exceeds ``threshold`` (``torchvision.ops.batched_nms``'s
    rule and arithmetic; equal results are tested).

    Written here rather than imported because ``torchvision`` takes ~2 s to import (it imports ``torch._dynamo``),
    and a cold ``predict`` or a web server's start on the CPU needs nothing else from it. Per photo, the IoU of
    every pair of its candidates at once (YuNet leaves tens), then one pass in score order: 128 photos with 1,280
    random candidates took 8 ms here against ``batched_nms``'s 16 ms.

    Parameters
    ----------
    boxes
        ``(n, 4)`` float32 ``x1, y1, x2, y2``.
    scores, groups
        ``(n,)`` scores, and the group (photo) of each box: boxes of different groups never suppress each other.
    threshold
        IoU above which the weaker box is dropped.
    """
    keep: list[np.ndarray] = []
    for g in np.unique(groups):  # photo by photo: a box only ever meets its own photo's boxes
        idx = np.flatnonzero(groups == g)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        b = boxes[idx].astype(np.float32)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        w = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        h = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        overlaps = inter / (area[:, None] + area[None, :] - inter) > threshold  # row: the better (kept) box
        alive = np.ones(len(idx), dtype=bool)
        for i in range(len(idx)):
            if alive[i]:
                alive[i + 1 :] &= ~overlaps[i, i + 1 :]
        keep.append(idx[alive])
    out = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return out[np.argsort(-scores[out], kind="stable")].astype(np.int64)


def decode_detections(outputs: list[np.ndarray], batch: int, pad_h: int, pad_w: int) -> list[np.ndarray]:
    """YuNet's twelve outputs for a batch → per photo, rows ``[x, y, w, h, 5 × (x, y), score]`` in detector pixels,
    after the score threshold and non-maximum suppression, best first (what OpenCV's ``FaceDetectorYN`` returns)."""
    import torch

    found = []
    for k, stride in enumerate(STRIDES):
        rows, cols = pad_h // stride, pad_w // stride
        cls, obj, box, kps = (torch.as_tensor(outputs[k + 3 * j]).reshape(batch, rows * cols, -1) for j in range(4))
        score = torch.sqrt(cls[..., 0].clamp(0, 1) * obj[..., 0].clamp(0, 1))
        b, cell = torch.nonzero(score >= SCORE_THRESHOLD, as_tuple=True)
        if len(b) == 0:
            continue
        c, r = (cell % cols).to(torch.float32), (cell // cols).to(torch.float32)
        bx = box[b, cell]
        w, h = torch.exp(bx[:, 2]) * stride, torch.exp(bx[:, 3]) * stride
        x1, y1 = (c + bx[:, 0]) * stride - w / 2, (r + bx[:, 1]) * stride - h / 2
        pts = kps[b, cell].reshape(-1, 5, 2)
        marks = torch.stack([(pts[..., 0] + c[:, None]) * stride, (pts[..., 1] + r[:, None]) * stride], dim=-1)
        found.append((b, torch.cat([torch.stack([x1, y1, w, h], 1), marks.reshape(-1, 10), score[b, cell, None]], 1)))
    out: list[np.ndarray] = [np.zeros((0, 15), np.float32) for _ in range(batch)]
    if not found:
        return out
    image = torch.cat([f[0] for f in found])
    faces = torch.cat([f[1] for f in found])
    # OpenCV suppresses on integer rectangles (truncated toward zero): the same boxes, the same overlaps.
    ints = faces[:, :4].to(torch.int64).to(torch.float32)
    xyxy = torch.cat([ints[:, :2], ints[:, :2] + ints[:, 2:4]], dim=1)
    keep = greedy_nms(xyxy.numpy(), faces[:, 14].numpy(), image.numpy(), NMS_THRESHOLD)  # best first
    kept_faces, kept_image = faces.numpy()[keep], image.numpy()[keep]
    per: dict[int, list[np.ndarray]] = defaultdict(list)
    for i, row in zip(kept_image, kept_faces, strict=True):
        per[int(i)].append(row)
    for i, rows in per.items():
        out[i] = np.stack(rows).astype(np.float32)
    return out
