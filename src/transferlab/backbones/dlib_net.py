"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch, read from dlib's own file.

The network is ``anet_type`` of dlib's ``tools/python/src/face_recognition.cpp``: a 7x7/2 convolution, a 3x3/2 max
pool, 14 residual blocks (32, 64, 128 and 256 filters), a global average pool and a 128-d fully connected layer
without bias. :func:`load_dlib_resnet` gives it as a torch module that computes what
``dlib.face_recognition_model_v1.compute_face_descriptor`` returns for a 150 px face chip (not L2-normalised), for a
batch of chips at a time. Each ``affine`` layer is folded into the convolution before it (exact up to float rounding).

dlib's arithmetic kept here: the input is ``(pixel - mean) / 256`` with the per-channel means stored in the file;
convolutions pad ``size // 2`` at stride 1 and nothing at stride 2, pools likewise; and ``add_prev`` adds tensors of
different shapes as dlib's ``tt::add`` does: each is zero-filled to the larger size in every dimension, at the end
(channels last, bottom rows, right columns), then they are summed. The down-sampling blocks rely on it: their 2x2
average-pooled shortcut has fewer channels than the block (32 + 64, 64 + 128, 128 + 256), and in the last two it is
also one row and column larger than the block's stride-2 unpadded convolution (128@4x4 + 256@3x3, 256@2x2 + 256@1x1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (filters, down-sampling) of the residual blocks, input to output: alevel4 .. alevel0 of ``anet_type``.
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),)
    + ((64, False),) * 3
    + ((128, True),)
    + ((128, False),) * 2
    + ((256, True),)
    + ((256, False),) * 2
    + ((256, True),)
)
CHIP = 150  # input_rgb_image_sized<150>
STEM = 32  # con<32,7,7,2,2>
DIM = 128  # fc_no_bias<128>

# ------------------------------------------------------------------------------------------------------------------
# Reading dlib's serialization format. Hand-written because no maintained Python reader of dlib's format exists (dlib's
# own Python module loads the network but exposes no weights). Each method follows the dlib function named in it;
# the format is not self-describing, so the layers are read in the order anet_type's deserialize reads them.


class _Reader:
    """Sequential reader of dlib's ``serialize.h`` encodings over the bytes of one file."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path} is not dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat): "
            f"{what} (at byte {self.pos} of {len(self.data)})"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"the file ends inside {what} (needs {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self, what: str, nbytes: int = 8) -> int:
        """``ser_helper::unpack_int``: a control byte (size in the low 4 bits, 0x80 = negative), then the
        little-endian magnitude. ``nbytes`` is the size of the C++ type it is read into."""
        (ctrl,) = self.take(1, what)
        size = ctrl & 0x0F
        if size == 0 or size > nbytes:
            self.pos -= 1
            raise self.fail(f"{what}: control byte 0x{ctrl:02x} is no {nbytes}-byte integer")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def boolean(self, what: str) -> bool:
        """``deserialize(bool&)``: the character '1' or '0'."""
        (ch,) = self.take(1, what)
        if ch not in b"01":
            self.pos -= 1
            raise self.fail(f"{what}: expected '0' or '1', found byte 0x{ch:02x}")
        return ch == ord("1")

    def string(self, what: str) -> str:
        """``deserialize(std::string&)``: an unsigned long length, then the bytes."""
        n = self.integer(what)
        return self.take(n, what).decode("latin-1")

    def tag(self, what: str, allowed: tuple[str, ...]) -> str:
        """A layer's version string (dlib's tag of the layer type), one of ``allowed``."""
        start = self.pos
        try:
            found = self.string(what)
        except ValueError:
            found = None
        if found not in allowed:
            self.pos = start
            shown = repr(found[:40]) if found is not None else f"no string (bytes {self.data[start : start + 12]!r})"
            raise self.fail(f"{what}: expected {' or '.join(map(repr, allowed))}, found {shown}")
        return found

    def double(self, what: str) -> float:
        """``deserialize_floating_point``: ``float_details``, an int64 mantissa and int16 exponent (value
        mantissa * 2**exponent; exponents 32000-32002 are inf, -inf and nan)."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what}: dlib's old ASCII float encoding, which this reader does not read")
        mantissa = self.integer(what, 8)
        exponent = self.integer(what, 2)
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def version(self, what: str, lo: int, hi: int) -> int:
        start = self.pos
        v = self.integer(what, 4)
        if not lo <= v <= hi:
            self.pos = start
            raise self.fail(f"{what}: version {v}, expected {lo}..{hi}")
        return v

    def tensor(self, what: str) -> np.ndarray:
        """``deserialize(resizable_tensor&)`` (dlib/cuda/tensor.h): version 2, four long longs (num_samples, k, nr,
        nc), then the values as raw little-endian float32."""
        self.version(f"{what} (tensor)", 2, 2)
        shape = tuple(self.integer(what) for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"{what}: negative tensor shape {shape}")
        n = math.prod(shape)
        return np.frombuffer(self.take(4 * n, what), dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, ...]:
        """``deserialize(alias_tensor&)``: version 1 and the four sizes, no values."""
        self.version(f"{what} (alias_tensor)", 1, 1)
        return tuple(self.integer(what) for _ in range(4))

    def expect(self, what: str, found: object, expected: object) -> None:
        if found != expected:
            raise self.fail(f"{what}: expected {expected}, found {found}")


def _con(r: _Reader, where: str, cin: int, cout: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``con_`` (dlib/dnn/layers.h): params (filters (num_filters, k, nr, nc), then biases), its shapes and settings.
    Padding is con_'s default, ``stride != 1 ? 0 : size/2``."""
    what = f"{where} con<{cout},{size},{size},{stride},{stride}>"
    version = r.tag(what, ("con_4", "con_5", "con_6"))
    params = r.tensor(f"{what} params").ravel()
    pad = 0 if stride != 1 else size // 2
    found = [r.integer(what) for _ in range(3)] + [r.integer(what, 4) for _ in range(4)]
    r.expect(f"{what} (num_filters, nr, nc, strides, paddings)", found, [cout, size, size, stride, stride, pad, pad])
    filters, biases = r.alias(f"{what} filters"), r.alias(f"{what} biases")
    for m in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.double(f"{what} {m}_multiplier")
    use_bias = r.boolean(f"{what} use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and r.boolean(f"{what} use_relu"):
        raise r.fail(f"{what}: a convolution with a fused relu, which anet_type does not have")
    r.expect(f"{what} filter shape", filters, (cout, cin, size, size))
    nweights = math.prod(filters)
    r.expect(f"{what} bias shape", biases if use_bias else None, (1, cout, 1, 1) if use_bias else None)
    r.expect(f"{what} number of parameters", params.size, nweights + (cout if use_bias else 0))
    bias = params[nweights:] if use_bias else np.zeros(cout, np.float32)
    return params[:nweights].reshape(filters), bias


def _affine(r: _Reader, where: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``affine_`` (dlib/dnn/layers.h), or the ``bn_<CONV_MODE>`` it is built from (``bn_con2``): gamma and beta."""
    what = f"{where} affine"
    version = r.tag(what, ("affine_", "affine_2", "bn_con2"))
    params = r.tensor(f"{what} params").ravel()
    shapes = (r.alias(f"{what} gamma"), r.alias(f"{what} beta"))
    if version == "bn_con2":
        stats = [r.tensor(f"{what} {name}").ravel() for name in ("means", "invstds", "running_means", "running_var")]
        r.integer(f"{what} num_updates")
        r.integer(f"{what} running_stats_window_size")
        for m in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
            r.double(f"{what} {m}_multiplier")
        eps = np.float32(r.double(f"{what} eps"))
        r.expect(f"{what} running stats sizes", (stats[2].size, stats[3].size), (channels, channels))
    else:
        r.expect(f"{what} mode (0 = CONV_MODE)", r.integer(f"{what} mode", 4), 0)
        if version == "affine_2" and r.boolean(f"{what} disabled"):  # affine_::disable(): no params, the identity
            return np.ones(channels, np.float32), np.zeros(channels, np.float32)
    r.expect(f"{what} gamma/beta shapes", shapes, ((1, channels, 1, 1),) * 2)
    r.expect(f"{what} number of parameters", params.size, 2 * channels)
    gamma, beta = params[:channels], params[channels:]
    if version == "bn_con2":  # affine_(const bn_&), in float: g = gamma / sqrt(running_var + eps), b = beta - g * mean
        gamma = gamma / np.sqrt(stats[3] + eps)
        beta = beta - gamma * stats[2]
    return gamma, beta


def _relu(r: _Reader, where: str) -> None:
    if r.tag(f"{where} relu", ("relu_", "relu_2")) == "relu_2" and r.boolean(f"{where} relu disabled"):
        raise r.fail(f"{where} relu: a disabled relu, which anet_type does not have")


def _pool(r: _Reader, where: str, kind: str, size: int, stride: int) -> None:
    """``max_pool_`` / ``avg_pool_``: nr, nc, strides and paddings (default ``stride != 1 ? 0 : size/2``)."""
    what = f"{where} {kind}<{size},{size},{stride},{stride}>"
    r.tag(what, (f"{kind}_2",))
    pad = 0 if stride != 1 else size // 2
    found = [r.integer(what), r.integer(what)] + [r.integer(what, 4) for _ in range(4)]
    r.expect(f"{what} (nr, nc, strides, paddings)", found, [size, size, stride, stride, pad, pad])


def _fc(r: _Reader, where: str, cin: int, cout: int) -> np.ndarray:
    """``fc_<cout, FC_NO_BIAS>``: params hold the weights as a (num_inputs, num_outputs) matrix."""
    what = f"{where} fc_no_bias<{cout}>"
    version = r.tag(what, ("fc_2", "fc_3"))
    r.expect(f"{what} (num_outputs, num_inputs)", (r.integer(what), r.integer(what)), (cout, cin))
    params = r.tensor(f"{what} params")
    weights = r.alias(f"{what} weights")
    r.alias(f"{what} biases")
    r.expect(f"{what} bias mode (1 = FC_NO_BIAS)", r.integer(what, 4), 1)
    for m in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.double(f"{what} {m}_multiplier")
    if version == "fc_3":
        r.boolean(f"{what} use_bias")
    r.expect(f"{what} weight shape", (weights, params.size), ((cin, cout, 1, 1), cin * cout))
    return params.reshape(cin, cout)


def _layer_tail(r: _Reader, where: str, version: int, bottom: bool = False) -> None:
    """What ``add_layer`` deserializes after its layer: three flags and its (training-time) tensors."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.boolean(f"{where} {flag}")
    r.tensor(f"{where} x_grad")
    r.tensor(f"{where} cached_output")
    if bottom:  # add_layer over the input layer: grad_final, and _sample_expansion_factor from version 3
        r.tensor(f"{where} grad_final")
        if version >= 3:
            r.integer(f"{where} sample_expansion_factor", 4)
    elif version == 2:
        r.tensor(f"{where} params_grad")


def _fold(w: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A convolution followed by ``affine`` as one convolution: ``w * g`` and ``b * g + beta`` (in float64)."""
    g = gamma.astype(np.float64)
    return (
        (w.astype(np.float64) * g[:, None, None, None]).astype(np.float32),
        (b.astype(np.float64) * g + beta).astype(np.float32),
    )


class _Layer(NamedTuple):
    """One of anet_type's layers: its kind, where it is (for messages), and for convolutions and affine layers the
    state-dict name they fill, their channels in and out, filter size and stride."""

    kind: str
    where: str
    name: str = ""
    cin: int = 0
    cout: int = 0
    size: int = 0
    stride: int = 1


def _layers_top_down() -> list[_Layer]:
    """anet_type's layers in the order add_loss_layer's deserialize meets them: output first, input last."""
    out = [_Layer("fc", "head", cin=BLOCKS[-1][0], cout=DIM), _Layer("avg_pool_everything", "global pool")]
    cins = [STEM] + [c for c, _ in BLOCKS[:-1]]
    for i in reversed(range(len(BLOCKS))):
        (c, down), w, pre = BLOCKS[i], f"block {i}", f"blocks.{i}.conv"
        out += [_Layer("relu", w), _Layer("add_prev", w)]
        out += [_Layer("avg_pool", w), _Layer("skip", w), _Layer("tag", w)] if down else []
        out += [_Layer("affine", w, pre + "2", c, c), _Layer("con", w, pre + "2", c, c, 3)]
        out += [_Layer("relu", w), _Layer("affine", w, pre + "1", cins[i], c)]
        out += [_Layer("con", w, pre + "1", cins[i], c, 3, 2 if down else 1), _Layer("tag", w)]
    out += [_Layer("max_pool", "stem"), _Layer("relu", "stem"), _Layer("affine", "stem", "stem", 3, STEM)]
    return [*out, _Layer("con", "stem", "stem", 3, STEM, 7, 2)]


def read_dlib_resnet(path: str | Path) -> dict[str, np.ndarray]:
    """Read dlib's face recognition ResNet file into the state dict of :class:`DlibFaceResNet`.

    A pure function of the file's bytes: the caller may cache its result (e.g. ``np.savez`` keyed by the file's hash)
    and build the module with :func:`dlib_resnet_from_state_dict`.

    Parameters
    ----------
    path : str or Path
        ``dlib_face_recognition_resnet_model_v1.dat`` (as shipped with dlib's models).

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays: ``mean`` (the input layer's RGB means), ``stem.*``, ``blocks.{i}.conv{1,2}.*`` (each affine
        folded into its convolution) and ``fc.weight`` ``(128, 256)``.

    Raises
    ------
    ValueError
        If the file is not this network: a wrong layer tag, a shape or setting that differs, non-finite weights, a
        truncated file or trailing bytes; the message names the file, the layer and the byte offset.
    """
    r = _Reader(Path(path).read_bytes(), str(path))
    r.version("add_loss_layer", 1, 1)
    if r.tag("loss layer", ("loss_metric_", "loss_metric_2")) == "loss_metric_2":
        r.double("loss_metric margin")
        r.double("loss_metric distance_threshold")
    # add_layer / add_tag_layer / add_skip_layer read their version, then their subnetwork, then (add_layer) their
    # own layer: all the versions come first, top-down, then the input layer, then the layers bottom-up.
    layers = _layers_top_down()
    versions = []
    for n, layer in enumerate(layers):
        kind = "add_tag_layer" if layer.kind in ("tag", "skip") else "add_layer"
        span = (1, 1) if kind == "add_tag_layer" else (2, 3) if n == len(layers) - 1 else (1, 2)
        versions.append(r.version(f"{layer.where} {layer.kind} ({kind})", *span))
    r.tag("input layer", ("input_rgb_image_sized",))
    mean = np.array([r.double("input layer mean") for _ in range(3)], np.float32)
    r.expect("input layer size", (r.integer("input layer"), r.integer("input layer")), (CHIP, CHIP))

    state: dict[str, np.ndarray] = {"mean": mean}
    conv: tuple[np.ndarray, np.ndarray] | None = None
    for n in reversed(range(len(layers))):
        layer, where = layers[n], layers[n].where
        if layer.kind in ("tag", "skip"):
            continue
        if layer.kind == "con":
            conv = _con(r, where, layer.cin, layer.cout, layer.size, layer.stride)
        elif layer.kind == "affine":
            state[f"{layer.name}.weight"], state[f"{layer.name}.bias"] = _fold(*conv, *_affine(r, where, layer.cout))
        elif layer.kind == "relu":
            _relu(r, where)
        elif layer.kind == "max_pool":
            _pool(r, where, "max_pool", 3, 2)
        elif layer.kind == "avg_pool":
            _pool(r, where, "avg_pool", 2, 2)
        elif layer.kind == "avg_pool_everything":
            _pool(r, where, "avg_pool", 0, 1)
        elif layer.kind == "add_prev":
            r.tag(f"{where} add_prev", ("add_prev_",))
        else:
            state["fc.weight"] = np.ascontiguousarray(_fc(r, where, layer.cin, layer.cout).T)
        _layer_tail(r, f"{where} {layer.kind}", versions[n], bottom=n == len(layers) - 1)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes after the network")
    bad = [k for k, v in state.items() if not np.isfinite(v).all()]
    if bad:
        raise r.fail(f"non-finite weights in {', '.join(bad)}")
    return state


# ------------------------------------------------------------------------------------------------------------------
# The network in torch.


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev`` (``tt::add`` of two shapes): the sum where both exist, the one that exists elsewhere."""
    if a.shape == b.shape:
        return a + b
    k, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    """``ares`` / ``ares_down``: relu(x + affine(con(relu(affine(con(x)))))), x average-pooled 2x2 if down-sampling."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(_add_zero_padded(F.avg_pool2d(x, 2, 2) if self.down else x, y))


class DlibFaceResNet(nn.Module):
    """dlib's ``anet_type``: ``(n, 3, 150, 150)`` RGB chips, values 0-255, to ``(n, 128)`` descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.stem = nn.Conv2d(3, STEM, 7, stride=2)
        cins = [STEM] + [c for c, _ in BLOCKS[:-1]]
        self.blocks = nn.ModuleList(_Block(cin, c, down) for cin, (c, down) in zip(cins, BLOCKS, strict=True))
        self.fc = nn.Linear(BLOCKS[-1][0], DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, CHIP, CHIP):
            raise ValueError(f"dlib's ResNet takes (n, 3, {CHIP}, {CHIP}) RGB chips, got {tuple(x.shape)}")
        x = (x.to(self.mean.dtype) - self.mean[:, None, None]) / 256  # input_rgb_image_sized::to_tensor
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):  # the input follows the weights' layout
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def dlib_resnet_from_state_dict(state: Mapping[str, np.ndarray | torch.Tensor]) -> DlibFaceResNet:
    """Build the network, in eval mode, from the state dict :func:`read_dlib_resnet` returned.

    Parameters
    ----------
    state : mapping of str to numpy.ndarray or torch.Tensor
        The converted weights (e.g. as cached by the caller).

    Returns
    -------
    DlibFaceResNet
        The module, in eval mode, with gradients off, its weights channels-last (the faster layout for torch's CPU
        convolutions here: 3.8 vs 4.1 ms a face at batch 16, 9.5 vs 17.8 at batch 1, 2 threads);
        ``.to(memory_format=torch.contiguous_format)`` switches it back.
    """
    with torch.device("meta"):  # no random initialisation: every parameter comes from ``state``
        net = DlibFaceResNet()
    tensors = {k: torch.as_tensor(np.array(v, dtype=np.float32)) for k, v in state.items()}
    net.load_state_dict(tensors, assign=True)
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def load_dlib_resnet(path: str | Path) -> DlibFaceResNet:
    """dlib's face recognition ResNet as a torch module, read from dlib's own ``.dat`` file.

    Parameters
    ----------
    path : str or Path
        ``dlib_face_recognition_resnet_model_v1.dat``.

    Returns
    -------
    DlibFaceResNet
        In eval mode: ``(n, 3, 150, 150)`` float RGB chips (0-255, as ``dlib.get_face_chip`` gives them, channels
        first) to ``(n, 128)`` descriptors, what ``compute_face_descriptor`` returns (not L2-normalised).

    Raises
    ------
    ValueError
        If the file is not this network (see :func:`read_dlib_resnet`).
    """
    return dlib_resnet_from_state_dict(read_dlib_resnet(path))
