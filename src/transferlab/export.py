"""Export: a saved whole-image model as one ONNX graph (normalisation → backbone → pooling → head → probabilities).

The graph takes the batch a user gets from the model's documented preprocessing (``model.json`` → ``backbone`` →
``preprocessing``: resize the shorter side, centre crop) as ``uint8`` RGB pixels ``(N, H, W, 3)`` and returns class
probabilities ``(N, K)`` in ``classes`` order, so a deployment needs onnxruntime and an image library, not torch.
Face models are not exported (their kind says why: the detector and the face choice are not one graph).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backbones.onnx_graph import export_module, features_module
from .errors import TransferlabError
from .pipeline import Classifier, load

if TYPE_CHECKING:  # pragma: no cover
    import torch


def head_module(head: Any) -> torch.nn.Module:
    """A torch module computing ``head.predict_proba`` from a feature batch ``(N, D)``.

    Parameters
    ----------
    head
        A fitted :mod:`transferlab.heads` head (logreg, svm or mlp), or a saved model's
        (:class:`~transferlab.fitted.FittedHead`).

    Returns
    -------
    torch.nn.Module
        Frozen module; its output equals the head's probabilities up to float rounding.
    """
    import torch

    def const(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    class _Linear(torch.nn.Module):
        def __init__(self, mean: np.ndarray, scale: np.ndarray, w: np.ndarray, b: np.ndarray, cal: Any) -> None:
            super().__init__()
            self.register_buffer("mean", const(mean))
            self.register_buffer("scale", const(scale))
            self.register_buffer("w", const(w.T))
            self.register_buffer("b", const(b))
            self.calibrate = cal is not None
            if cal is not None:
                self.register_buffer("cw", const(cal[0].T))
                self.register_buffer("cb", const(cal[1]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = ((x - self.mean) / self.scale) @ self.w + self.b
            if self.calibrate:
                z = z @ self.cw + self.cb
            return torch.softmax(z, dim=1)

    class _MLP(torch.nn.Module):
        def __init__(self, h: Any) -> None:
            super().__init__()
            self.register_buffer("w1", const(h.w1_.T))
            self.register_buffer("b1", const(h.b1_))
            self.register_buffer("w2", const(h.w2_.T))
            self.register_buffer("b2", const(h.b2_))
            self.act = torch.relu if h.activation == "relu" else torch.sigmoid

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.act(x @ self.w1 + self.b1) @ self.w2 + self.b2, dim=1)

    name = getattr(getattr(head, "spec", None), "name", None)  # a fitted head, or a saved one (transferlab.fitted)
    if name == "svm":
        m: torch.nn.Module = _Linear(
            head.mean_, head.scale_, head.coef_, head.intercept_, (head.cal_coef_, head.cal_intercept_)
        )
    elif name == "logreg":
        m = _Linear(head.mean_, head.scale_, head.coef_, head.intercept_, None)
    elif name == "mlp":
        m = _MLP(head)
    else:
        raise TransferlabError(f"cannot export a {type(head).__name__} head")
    return m.eval().requires_grad_(False)


def pipeline_module(clf: Classifier) -> torch.nn.Module:
    """The whole model as one torch module: ``uint8`` pixels ``(N, H, W, 3)`` → probabilities ``(N, K)``."""
    import torch

    refusal = clf.options().kind.export_refusal
    if refusal is not None:
        raise TransferlabError(f"{clf.backbone} {refusal}")
    if not hasattr(clf, "head_"):
        raise TransferlabError("this classifier is not trained yet; call fit() or load a saved model")
    features = features_module(clf.extractor_.backbone, clf.options_.pool.value)

    class _Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.head = head_module(clf.head_)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(pixels))

    return _Pipeline().eval().requires_grad_(False)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote, and how far the ONNX Runtime outputs are from torch's."""

    path: Path
    input_shape: tuple[int, ...]
    classes: list[str]
    max_abs_diff: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The ``export --json`` object."""
        return {
            "onnx": str(self.path),
            "input": {"name": "pixels", "dtype": "uint8", "shape": list(self.input_shape), "layout": "NHWC RGB"},
            "output": {"name": "probabilities", "classes": self.classes},
            "max_abs_diff_vs_torch": self.max_abs_diff,
            "bytes": self.bytes,
        }


def export_onnx(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    opset: int = 18,
    check: bool = True,
) -> ExportResult:
    """Write a saved whole-image model as one ONNX file and check it against torch with onnxruntime.

    Parameters
    ----------
    model_dir
        Model directory from ``transferlab train``.
    out
        ONNX file to write (replaced atomically).
    weights
        Backbone weights file, when the model was trained with ``--weights``.
    opset
        ONNX opset version.
    check
        Run the exported graph with onnxruntime on a few random batches and record the largest difference from
        the torch model (raises when it exceeds 1e-4).

    Returns
    -------
    ExportResult
    """
    import torch

    clf = load(model_dir, weights=weights, use_cache=False, device="cpu")
    module = pipeline_module(clf)
    size = tuple(clf.extractor_.backbone.cfg.input_size[1:])
    example = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    export_module(module, example, tmp, "probabilities", opset=opset)
    _add_metadata(tmp, clf)
    diff = float("nan")
    if check:
        diff = _max_diff(tmp, module, size)
        if not diff <= 1e-4:
            tmp.unlink(missing_ok=True)
            raise TransferlabError(f"exported graph differs from the torch model by {diff:.2e} (> 1e-4); not written")
    os.replace(tmp, out)
    return ExportResult(out, (-1, *size, 3), [str(c) for c in clf.classes_], diff, out.stat().st_size)


def _add_metadata(path: Path, clf: Classifier) -> None:
    import onnx

    m = onnx.load(str(path))
    bb = clf.extractor_.backbone
    meta = {
        "transferlab.classes": json.dumps([str(c) for c in clf.classes_]),
        "transferlab.backbone": bb.cfg.name,
        "transferlab.license": bb.cfg.license,
        "transferlab.head": clf.head,
        "transferlab.preprocessing": json.dumps(bb.cfg.preprocessing()),
        "transferlab.input": "uint8 RGB pixels (N, H, W, 3) after the resize and centre crop in preprocessing",
    }
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def _max_diff(path: Path, module: torch.nn.Module, size: tuple[int, ...]) -> float:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (1, 3):
        x = torch.randint(0, 256, (n, *size, 3), dtype=torch.uint8, generator=gen)
        with torch.inference_mode():
            ref = module(x).numpy()
        got = sess.run(None, {"pixels": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst
