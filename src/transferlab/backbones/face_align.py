"""Face alignment: the 5-point similarity transform to the 112×112 template (OpenCV's algorithm, vectorised) and
the warp that cuts every face of a photo at once, on the device (``grid_sample``) or as the CPU does (``remap``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

ALIGNED = 112
# SFace's template for the 5 landmarks (eyes, nose tip, mouth corners) in its 112×112 input, and its mean.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE_MEAN = np.array([56.0262, 71.9008])


def similarity_transforms(landmarks: np.ndarray) -> np.ndarray:
    """``(n, 2, 3)`` affine maps from each face's 5 landmarks ``(n, 5, 2)`` to the template (least squares,
    Umeyama), computed as OpenCV's ``FaceRecognizerSF.alignCrop`` does, for all faces at once."""
    src = landmarks.astype(np.float64)
    src_mean = src.mean(axis=1)
    src_d = src - src_mean[:, None, :]
    dst_d = TEMPLATE[None] - TEMPLATE_MEAN
    a = np.einsum("ki,nkj->nij", dst_d[0], src_d) / 5.0  # A[i][j] = mean over landmarks of dst_i · src_j
    d = np.where(np.linalg.det(a) < 0, -1.0, 1.0)
    u, s, vt = np.linalg.svd(a)
    rank = (s > s.max(axis=1, keepdims=True) * 2 * np.finfo(np.float32).tiny).sum(axis=1)
    sign_ok = np.linalg.det(u) * np.linalg.det(vt) > 0
    # rank 2: T = U·diag(1, d)·Vᵀ; rank 1: U·Vᵀ when det(U)·det(Vᵀ) > 0, else U·diag(1, -1)·Vᵀ
    d2 = np.where(rank == 1, np.where(sign_ok, 1.0, -1.0), d)
    t = u @ (np.stack([np.ones_like(d2), d2], axis=1)[:, :, None] * vt)
    var = (src_d**2).sum(axis=(1, 2)) / 5.0
    scale = (s[:, 0] + s[:, 1] * d) / var
    out = np.empty((len(src), 2, 3))
    out[:, :, :2] = t * scale[:, None, None]
    out[:, :, 2] = TEMPLATE_MEAN - scale[:, None] * np.einsum("nij,nj->ni", t, src_mean)
    return out


def _inverse_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of ``(n, 2, 3)`` affine maps, computed as OpenCV's ``invertAffineTransform`` does."""
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a22, a12, a21 = m[:, 1, 1] * d, m[:, 0, 0] * d, -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return np.stack([np.stack([a11, a12, b1], 1), np.stack([a21, a22, b2], 1)], 1)


def fixed_point_coords(transforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel of every face, the source coordinates ``(x, y)`` in 1/32 pixel, ``(n, 112, 112)``.

    What OpenCV's ``warpAffine`` computed (up to version 4) before interpolating: the inverse map evaluated in fixed
    point, 1/1024 pixel per term, then rounded to 1/32.
    """
    inv = _inverse_affine(transforms)  # output pixel → source pixel
    steps = np.arange(ALIGNED, dtype=np.float64)

    def fixed(row: int) -> np.ndarray:
        along = np.rint(inv[:, row, 0, None] * steps * 1024).astype(np.int32)  # (n, 112): per output column
        base = np.rint((inv[:, row, 1, None] * steps + inv[:, row, 2, None]) * 1024).astype(np.int32) + 16
        return (along[:, None, :] + base[:, :, None]) >> 5  # (n, 112 rows, 112 cols)

    return fixed(0), fixed(1)


def warp_faces(image: torch.Tensor, transforms: np.ndarray) -> torch.Tensor:
    """Aligned ``112×112`` crops ``(n, 3, 112, 112)`` (float, 0–255) of one ``(3, H, W)`` uint8 image, on its device.

    ``cv2.warpAffine(..., INTER_LINEAR)`` of OpenCV 4 with a black border, bit for bit: each output pixel is mapped
    back in fixed point (:func:`fixed_point_coords`) and its 4 neighbours blended with integer weights that sum to
    2¹⁵. ``grid_sample`` interpolates in float, which moved the crops of faces under ~20 px by up to 3 grey levels
    and their embeddings to a cosine of 0.987; OpenCV 5 changed ``warpAffine`` by up to a grey level. So the
    arithmetic is written out here, and the crops depend on neither.
    """
    import torch

    xq, yq = (torch.from_numpy(v).to(image.device) for v in fixed_point_coords(transforms))
    x0, y0, fx, fy = xq >> 5, yq >> 5, xq & 31, yq & 31
    c, h, w = image.shape
    flat = image.reshape(c, -1).to(torch.int32)
    acc = torch.zeros((len(transforms), c, ALIGNED, ALIGNED), dtype=torch.int32, device=image.device)
    taps = ((0, 0, (32 - fx) * (32 - fy)), (0, 1, fx * (32 - fy)), (1, 0, (32 - fx) * fy), (1, 1, fx * fy))
    for dy, dx, weight in taps:
        xs, ys = x0 + dx, y0 + dy
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(-1)
        pixels = flat[:, index].reshape(c, *xs.shape).permute(1, 0, 2, 3)
        acc += pixels * (weight * 32 * inside).to(torch.int32)[:, None]
    return ((acc + (1 << 14)) >> 15).to(torch.float32)


def warp_faces_remap(image: torch.Tensor, transforms: np.ndarray) -> torch.Tensor:
    """:func:`warp_faces` on the CPU through ``cv2.remap`` given the fixed-point maps: the same pixels with OpenCV 4
    or 5 (checked), ~15× faster than the tensor version there."""
    import cv2
    import torch

    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    xq, yq = fixed_point_coords(transforms)
    crops = []
    for x, y in zip(xq, yq, strict=True):
        xy = np.stack([x >> 5, y >> 5], axis=-1).astype(np.int16)
        frac = ((y & 31) * 32 + (x & 31)).astype(np.uint16)
        crops.append(cv2.remap(hwc, xy, frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(torch.float32)


def clamp_boxes(detections: np.ndarray, width: int, height: int) -> np.ndarray:
    """Detector rows with the box ``x, y, w, h`` clipped to the image (landmarks and score unchanged)."""
    d = detections.copy()
    x1, y1 = np.clip(d[:, 0], 0, width), np.clip(d[:, 1], 0, height)
    x2, y2 = np.clip(d[:, 0] + d[:, 2], 0, width), np.clip(d[:, 1] + d[:, 3], 0, height)
    d[:, 0], d[:, 1], d[:, 2], d[:, 3] = x1, y1, x2 - x1, y2 - y1
    return d
