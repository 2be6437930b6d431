"""ONNX Runtime as a CPU backend for whole-image backbones: the frozen network exported once, then run by
onnxruntime (measured 1.2× torch's forward throughput on a quiet 2-core CPU here, more when the cores are busy;
BENCHMARKS.md).

The exported graph takes the same ``uint8`` batch as :meth:`Backbone.forward` and returns the same features
(within 1e-5, tested), so features from either runtime share one cache. The export (~5–15 s) is kept beside the
feature cache, keyed by weights, pooling and library versions, and reused by every later run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransferlabError

# Part of the exported file's name: bump when the graph's arithmetic changes (it equals features version 5's).
EXPORT_VERSION = "5"

if TYPE_CHECKING:  # pragma: no cover
    import torch


def features_module(backbone: Any, pool: str) -> torch.nn.Module:
    """``uint8`` pixels ``(N, H, W, 3)`` → features, with :meth:`ImageBackbone.forward`'s exact arithmetic.

    ``backbone`` is a built :class:`~transferlab.backbones.ImageBackbone` (its ``cfg`` and ``module``).
    """
    import torch

    cfg = backbone.cfg
    net = backbone.module

    class _Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = net
            self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
            fmap = self.backbone(x)
            return fmap.mean(dim=(2, 3)) if pool == "avg" else fmap.permute(0, 2, 3, 1).flatten(1)

    return _Features().eval().requires_grad_(False)


def export_module(module: torch.nn.Module, example: torch.Tensor, path: Path, output: str, opset: int = 18) -> None:
    """Export ``module`` (input ``pixels``, dynamic batch) to ``path``, atomically."""
    import torch

    try:
        import onnx  # noqa: F401 - torch.onnx.export needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError:
        raise TransferlabError("ONNX export needs onnx and onnxscript; run `pip install onnx onnxscript`") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=[output],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_session(backbone: Any, pool: str, cache_root: Path, threads: int = 0) -> Any:
    """An onnxruntime session computing ``backbone``'s features, exporting the graph on first use.

    ``threads``: onnxruntime's intra-op threads (0: its default, one per physical core).
    """
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferlabError("--runtime onnxruntime needs `pip install onnxruntime onnx onnxscript`") from None
    tuned = f"-ft{backbone.tuned_hash[:16]}" if getattr(backbone, "tuned_hash", None) else ""
    key = f"{backbone.cfg.name}-{backbone.weights_hash[:16]}{tuned}-{pool}-v{EXPORT_VERSION}-torch{torch.__version__}"
    path = cache_root / "onnx" / f"{key.replace('+', '_')}.onnx"
    if not path.is_file():
        size = backbone.cfg.input_size
        example = torch.zeros((2, size[1], size[2], 3), dtype=torch.uint8)
        export_module(features_module(backbone, pool), example, path, "features")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
