"""A second look for photos in which the detector found no face: the photo enlarged (small photos: faces below the
detector's minimum), cut into overlapping tiles (large photos: faces that the shrink to 640 px made too small), and
turned each way (tilted heads); the look the detector is surest of is kept. Photos where the first look found a face
are never looked at again, so they cost nothing more.

Every look maps its rows back to the photo's own pixels (box, landmarks), so alignment and the embedding then run on
the original photo like any other face.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .face_detect import DETECTOR_MAX_SIDE, NMS_THRESHOLD, greedy_nms

if TYPE_CHECKING:  # pragma: no cover
    import torch

Detect = Callable[[list["torch.Tensor"]], list[np.ndarray]]
ANGLES = (-30.0, 30.0, -60.0, 60.0, -90.0, 90.0)  # degrees, nearest first: heads tilted past YuNet's reach
MAX_ENLARGE = 4.0  # a 160-px photo is looked at as a 640-px one, no more
TILE_OVERLAP = 0.25

RECIPE = f"enlarge ≤ {MAX_ENLARGE:g}× to {DETECTOR_MAX_SIDE} px, 2×2 tiles ({TILE_OVERLAP:.0%} overlap), turns {ANGLES}"


def _warp(image: torch.Tensor, m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The photo through a 2×3 affine map, onto a canvas of ``size`` (width, height)."""
    import cv2
    import torch

    out = cv2.warpAffine(image.permute(1, 2, 0).cpu().numpy(), m, size, flags=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)


def _mapped_back(rows: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Rows found in a warped photo, in the original photo's pixels: landmarks through the inverse map, the box as
    the bounding box of its mapped corners."""
    if not len(rows):
        return rows
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    out = rows.copy()
    pts = rows[:, 4:14].reshape(-1, 5, 2)
    out[:, 4:14] = (pts @ inv[:, :2].T + inv[:, 2]).reshape(-1, 10)
    x, y, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    corners = np.stack(
        [np.stack([x, y], 1), np.stack([x + w, y], 1), np.stack([x, y + h], 1), np.stack([x + w, y + h], 1)], 1
    )
    back = corners @ inv[:, :2].T + inv[:, 2]
    lo, hi = back.min(axis=1), back.max(axis=1)
    out[:, 0:2], out[:, 2:4] = lo, hi - lo
    return out


def _enlarged(image: torch.Tensor, detect: Detect) -> np.ndarray:
    h, w = image.shape[1:]
    scale = min(MAX_ENLARGE, DETECTOR_MAX_SIDE / max(h, w))
    if scale <= 1.25:
        return np.zeros((0, 15), np.float32)
    m = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    return _mapped_back(detect([_warp(image, m, (round(w * scale), round(h * scale)))])[0], m)


def _tiled(image: torch.Tensor, detect: Detect) -> np.ndarray:
    h, w = image.shape[1:]
    if max(h, w) <= 1.25 * DETECTOR_MAX_SIDE:
        return np.zeros((0, 15), np.float32)
    th, tw = int(h * (0.5 + TILE_OVERLAP / 2)), int(w * (0.5 + TILE_OVERLAP / 2))
    origins = [(y, x) for y in (0, h - th) for x in (0, w - tw)]
    found = detect([image[:, y : y + th, x : x + tw] for y, x in origins])
    rows = [r + np.r_[x, y, 0, 0, [x, y] * 5, 0].astype(np.float32) for (y, x), r in zip(origins, found, strict=True)]
    rows = np.concatenate(rows) if rows else np.zeros((0, 15), np.float32)
    if not len(rows):
        return rows
    xyxy = np.column_stack([rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]])
    keep = greedy_nms(xyxy.astype(np.float32), rows[:, 14], np.zeros(len(rows), dtype=np.int64), NMS_THRESHOLD)
    return rows[keep]


def _turned(image: torch.Tensor, detect: Detect, angle: float) -> np.ndarray:
    import cv2

    h, w = image.shape[1:]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return _mapped_back(detect([_warp(image, m, (nw, nh))])[0], m)


def look_again(image: torch.Tensor, detect: Detect) -> np.ndarray:
    """Face rows ``[x, y, w, h, 5 × (x, y), score]`` in ``image``'s pixels from the look (enlarged, tiled, or one of
    the turns) whose best face the detector is surest of, or none.

    Every look is taken and the surest kept, not the first that finds something: an enlarged photo of a turned head
    gives a dozen weak detections, and a head turned 90° is also found, less surely and with its landmarks
    misplaced, at 60° (measured on the bundled photos' turned variants: ``benchmarks/second_look.py``).
    """
    looks = [_enlarged(image, detect), _tiled(image, detect), *(_turned(image, detect, a) for a in ANGLES)]
    best = max(looks, key=lambda r: float(r[:, 14].max()) if len(r) else -1.0)
    return best.astype(np.float32)
