"""EdgeFace (Idiap, IEEE T-BIOM 2024): small face embedders on EdgeNeXt, as face backbones, opt-in.

Idiap publishes ``edgeface_xs_q`` and ``edgeface_xxs_q`` as timm EdgeNeXt networks (a 512-d head) whose every
``nn.Linear`` is dynamically quantised to int8. transferlab loads such a file without unpickling anything but
tensors (``weights_only``), dequantises the int8 weights once into the float timm network and runs that — on the
CPU lanes, a GPU and Spark's executors alike, like SFace. It reads the same aligned 112×112 crop as SFace (the
ArcFace 5-point template), scaled as ``(x/255 − 0.5)/0.5``.

The weights are **CC BY-NC-SA 4.0 (non-commercial)**: no package ships them and they are never the default. A user
adds the official file once (``transferlab weights get edgeface_xs``, or ``weights add FILE``); the registry pins
its sha256. ``sface_edgeface`` puts SFace's and EdgeFace-XS's unit embeddings side by side (a cosine is the mean of
both), made from each part's own cached rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TransferlabError
from ._registry import BackboneCfg, FaceCfg, WeightsSource, register_backbone
from .face_embedders import CropEmbedder, register_crop_embedder
from .face_graphs import SFACE, YUNET
from .faces import DETECTION

if TYPE_CHECKING:  # pragma: no cover
    import torch

OFFICIAL = "https://gitlab.idiap.ch/bob/bob.paper.tbiom2023_edgeface/-/raw/master/checkpoints"
LICENSE = "CC BY-NC-SA 4.0 (Idiap EdgeFace weights)"
_QUANT = ("._packed_params._packed_params", ".scale", ".zero_point", "._packed_params.dtype")


def float_state(path: Path) -> dict[str, torch.Tensor]:
    """The float state dict of an int8 EdgeFace file: every quantised ``nn.Linear`` dequantised once, the rest as
    stored, the wrapper's ``model.`` prefix removed."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's notices about the quantised tensors' (old) storage format
            warnings.simplefilter("ignore", UserWarning)
            stored = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise TransferlabError(f"{path}: not a readable EdgeFace weights file ({type(exc).__name__})") from None
    state: dict[str, torch.Tensor] = {}
    for key, value in stored.items():
        key = key.removeprefix("model.")
        if key.endswith(_QUANT[0]):  # (int8 weight, float bias) of a dynamically quantised Linear
            weight, bias = value
            base = key.removesuffix(_QUANT[0])
            state[f"{base}.weight"] = weight.dequantize()
            if bias is not None:
                state[f"{base}.bias"] = bias.detach().float()
        elif not key.endswith(_QUANT[1:]):  # the activations' quantisation parameters are not needed in float
            state[key] = value
    return state


def build_edgeface(arch: str, path: Path) -> torch.nn.Module:
    """The float EdgeFace network on RGB crops (0–255): ``(x/255 − 0.5)/0.5``, then timm's ``arch`` with a 512-d
    head."""
    import timm
    import torch

    net = timm.create_model(arch, pretrained=False)
    net.reset_classifier(512)
    try:
        net.load_state_dict(float_state(path), strict=True)
    except RuntimeError as exc:
        raise TransferlabError(
            f"{path}: not the weights of {arch} with a 512-d head ({str(exc).splitlines()[0][:120]})"
        ) from None

    class EdgeFace(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return self.net(crops / 127.5 - 1.0)

    return EdgeFace().eval().requires_grad_(False)


_ALIGN = {**DETECTION, "align": "5-point similarity → 112×112 (cv2 alignCrop)", "normalise": "(x/255 − 0.5)/0.5"}

for _name, _arch, _file, _sha, _params, _speed in (
    (
        "edgeface_xs",
        "edgenext_x_small",
        "edgeface_xs_q.pt",
        "a31314377876ab9fa2a75e5638bc528efe79fd17d5c9c0a228fb7f846d7581a6",
        2_242_620,
        "about half SFace's time per face",
    ),
    (
        "edgeface_xxs",
        "edgenext_xx_small",
        "edgeface_xxs_q.pt",
        "46be7cc7e8d6e23501c0627fe5fbef101922ee9b85ccbef476987ab1a320b053",
        1_244_744,
        "the smallest",
    ),
):
    register_crop_embedder(CropEmbedder(_name, 512, lambda path, arch=_arch: build_edgeface(arch, path)))
    register_backbone(
        BackboneCfg(
            name=_name,
            architecture=f"YuNet detector + EdgeFace ({_arch}, int8 weights dequantised)",
            weights=WeightsSource(kind="file", filename=_file, sha256=_sha, url=f"{OFFICIAL}/{_file}"),
            input_size=(3, 112, 112),
            feature_shape=(512,),
            num_params=_params,
            family="face",
            license=LICENSE,
            noncommercial=True,
            description=f"EdgeFace face embedding (512-d) of the detected, aligned face; {_speed}; non-commercial",
            face=FaceCfg(embedder=_name, preprocessing=_ALIGN),
            files=(YUNET,),
        )
    )

register_backbone(
    BackboneCfg(
        name="sface_edgeface",
        architecture="YuNet detector + SFace and EdgeFace-XS embeddings, fused",
        weights=WeightsSource(
            kind="file",
            filename="edgeface_xs_q.pt",
            sha256="a31314377876ab9fa2a75e5638bc528efe79fd17d5c9c0a228fb7f846d7581a6",
            url=f"{OFFICIAL}/edgeface_xs_q.pt",
        ),
        input_size=(3, 112, 112),
        feature_shape=(640,),
        num_params=9_976_053 + 2_242_620,
        family="face",
        license=f"Apache-2.0 (OpenCV Zoo) + {LICENSE}",
        noncommercial=True,
        description="SFace and EdgeFace-XS side by side (640-d; cosine = the mean of both); non-commercial",
        face=FaceCfg(
            embedder="sface+edgeface_xs",
            preprocessing={**_ALIGN, "align": "5-point similarity → 112×112 (both)"},
            parts=("sface", "edgeface_xs"),
        ),
        files=(YUNET, SFACE),
    )
)
