"""Whole-image backbones: a frozen torch network (built on first use), its preprocessing and its weights' identity."""

from __future__ import annotations

import os
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import file_sha256
from .._runtime import exact_fp32
from ..errors import TransferlabError
from ._registry import BackboneCfg, device_recipe
from ._tensors import load_tuned, tensors_sha256

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SESSIONS_LOCK = threading.Lock()
POOLS = ("avg", "flatten")


def _fuse_conv_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Fold frozen batch-norm layers into the preceding convolutions (torch.fx), where the model can be traced.

    Inference-only and exact up to float rounding (~1e-5); saves the separate batch-norm pass, which was ~20% of
    MobileNetV2's CPU time here. Models that fx cannot trace (e.g. TF-"same"-padded EfficientNet) run unfused.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(module)
    except Exception:  # noqa: BLE001 - tracing limits vary by architecture; unfused is always correct
        return module


class ImageBackbone:
    """A whole-image backbone with pretrained weights: the frozen network, its preprocessing and the identity of its
    weights.

    Building the network imports torch, torchvision and timm (seconds), so it waits until a feature actually has
    to be computed: a run whose features all come from the cache never pays for it. Use
    :func:`transferlab.backbones.create_backbone`.
    """

    def __init__(self, cfg: BackboneCfg, weights_file: Path) -> None:
        self.cfg = cfg
        self.weights_file = weights_file
        self._device = "cpu"
        self.runtime = "torch"
        self._onnx_root: Path | None = None
        self._sessions: dict[str, Any] = {}
        self.tuned: dict[str, np.ndarray] | None = None  # fine-tuned weights of the top blocks (``tune``)
        self.recipe_name = "portable"  # see use_recipe

    @classmethod
    def with_random_weights(cls, cfg: BackboneCfg) -> ImageBackbone:
        """The architecture with random weights, for speed measurements only (throughput does not depend on weight
        values); :func:`~transferlab.backbones.create_backbone` never returns one."""
        import torch

        assert cfg.build is not None
        bb = cls(cfg, Path(os.devnull))
        net = _fuse_conv_bn(cfg.build(None).eval().requires_grad_(False))
        bb.__dict__["module"] = net.to(memory_format=torch.channels_last)
        bb.__dict__["weights_hash"] = "random"
        return bb

    def use_onnxruntime(self, cache_root: str | os.PathLike[str]) -> ImageBackbone:
        """Run the network with onnxruntime on the CPU (exported once into ``cache_root/onnx``)."""
        if self._device != "cpu":
            raise TransferlabError(f"--runtime onnxruntime runs on the CPU, not {self._device}; use --device cpu")
        self.runtime = "onnxruntime"
        self._onnx_root = Path(cache_root)
        return self

    def use_recipe(self, recipe: str) -> ImageBackbone:
        """``"portable"`` (CPU decoding, fp32: the same features on every device) or ``"fast"`` (on a CUDA GPU:
        nvJPEG decoding and bf16); see :func:`~transferlab.backbones.device_recipe`."""
        device_recipe(self._device, recipe)  # checks the name
        self.recipe_name = recipe
        return self

    @cached_property
    def module(self) -> torch.nn.Module:
        """The frozen network in eval mode (channels_last), mapping images to the final feature map."""
        import torch

        assert self.cfg.build is not None
        try:
            module = self.cfg.build(self.weights_file)
        except TransferlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad weights file is a user error, not a crash
            raise TransferlabError(
                f"{self.cfg.name}: cannot load weights from {self.weights_file} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the file must be a state dict for {self.cfg.architecture}"
            ) from None
        if self.tuned:
            load_tuned(module, self.tuned, self.cfg.name)
        module = _fuse_conv_bn(module.eval().requires_grad_(False))
        # channels_last lets oneDNN pick its fastest convolution kernels on CPU and tensor cores on GPU.
        return module.to(device=self._device, memory_format=torch.channels_last)

    def build(self, photos: int | None = None) -> ImageBackbone:
        """Build the network now (weights loaded, layers fused), not on the first batch; ``photos``: the job's size
        (not used: this network is built the same way for any job)."""
        _ = self.module
        return self

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        import torch

        return torch.device(self._device)

    @cached_property
    def weights_hash(self) -> str:
        """sha256 of the weights file (part of every cache key, so other weights never reuse features)."""
        return file_sha256(self.weights_file)

    def tune(self, state: dict[str, np.ndarray] | None) -> ImageBackbone:
        """Use fine-tuned weights for some of the network's tensors (``state``: names as in its state dict)."""
        self.tuned = dict(state) if state else None
        self.__dict__.pop("module", None)
        self.__dict__.pop("tuned_hash", None)
        self._sessions.clear()
        return self

    @cached_property
    def tuned_hash(self) -> str | None:
        """sha256 of the fine-tuned tensors (names, shapes and values), or None for the pretrained network."""
        return tensors_sha256(self.tuned) if self.tuned else None

    def recipe(self, pool: str) -> dict[str, Any]:
        """How this backbone's features are made: network, weights, preprocessing, pooling and precision."""
        spec = {
            "backbone": self.cfg.name,
            "architecture": self.cfg.architecture,
            "weights_sha256": self.weights_hash,
            "preprocessing": self.cfg.preprocessing(),
            "pool": pool,
        }
        if self.tuned_hash:  # fine-tuned top blocks: features never mix with the pretrained network's
            spec["finetuned_sha256"] = self.tuned_hash
        if self.precision != "fp32":  # GPU features (bf16) never mix with CPU ones (fp32)
            spec["precision"] = self.precision
        if self.decoder != "cpu":  # nor nvJPEG's pixels with libjpeg-turbo's
            spec["decode"] = self.decoder
        return spec

    def row_width(self, pool: str) -> int:
        """Values per feature row: channels (``avg``) or the flattened feature map (``flatten``)."""
        shape = self.cfg.feature_shape
        return int(np.prod(shape)) if pool == "flatten" else int(shape[0])

    def feature_dim(self, pool: str) -> int:
        """Values a head sees per photo: the whole row."""
        return self.row_width(pool)

    def prepare(self, options: Any, *, device: str, cache_root: Path) -> ImageBackbone:
        """Ready to run as ``options`` (:class:`~transferlab.features.FeatureOptions`) say: on ``device`` with their
        recipe, and on onnxruntime (exported once under ``cache_root``) when their ``runtime`` asks for it."""
        self.to(device).use_recipe(options.recipe_name)
        return self.use_onnxruntime(cache_root) if options.runtime.value == "onnxruntime" else self

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """Decoded ``uint8`` image ``(3, H, W)`` → resized, centre-cropped ``uint8`` tensor ``(h, w, 3)`` (or a
        batch of equal-sized images ``(N, 3, H, W)`` → ``(N, h, w, 3)``, the same pixels).

        Resize the shorter side to ``resize_size`` and crop ``input_size`` from the centre, as timm's eval
        transform does for this config, but with torch's antialiased ``uint8`` kernels: 2× faster than Pillow
        here and within one grey level of it (tested). Scaling and mean/std normalisation happen later on the
        whole batch in :meth:`forward`, and the ``(N, h, w, 3)`` batch is already channels-last.
        """
        import torchvision.transforms.v2.functional as tvf
        from torchvision.transforms import InterpolationMode

        mode = InterpolationMode.BICUBIC if self.cfg.interpolation == "bicubic" else InterpolationMode.BILINEAR
        image = tvf.resize(image, [self.cfg.resize_size], interpolation=mode, antialias=True)
        image = tvf.center_crop(image, list(self.cfg.input_size[1:]))
        return image.movedim(-3, -1).contiguous()

    @property
    def draft_size(self) -> tuple[int, int]:
        """Smallest decode size that loses nothing before the resize (for JPEG draft mode)."""
        s = self.cfg.resize_size
        return (s, s)

    @property
    def precision(self) -> str:
        """``"bf16"`` (autocast) with the fast recipe on a CUDA GPU, ``"fp32"`` otherwise."""
        return device_recipe(self._device, self.recipe_name)["precision"]

    @property
    def decoder(self) -> str:
        """Where JPEGs are decoded: ``"nvjpeg"`` with the fast recipe on a CUDA GPU, ``"cpu"`` (libjpeg-turbo,
        with the loader's draft decode and resize) otherwise."""
        return device_recipe(self._device, self.recipe_name)["decode"]

    def to(self, device: str | torch.device) -> ImageBackbone:
        """Move the network to a device."""
        self._device = str(device)
        if "module" in self.__dict__:
            self.__dict__["module"] = self.module.to(self._device)
        return self

    def forward(self, x: torch.Tensor, pool: str = "avg") -> torch.Tensor:
        """Features for a batch of ``uint8`` images ``(N, H, W, 3)`` from :attr:`transform`.

        ``pool="avg"`` → ``(N, C)``; ``pool="flatten"`` → ``(N, h*w*C)``, the seed's Keras flatten order.
        """
        import torch

        if pool not in POOLS:
            raise TransferlabError(f"pool {pool!r}: choose 'avg' or 'flatten'")
        if self.runtime == "onnxruntime":
            # One session per thread count: featurize's lanes each run with their share of the cores
            # (torch.get_num_threads() is per thread there), and onnxruntime's team is fixed per session.
            threads = torch.get_num_threads()
            key = f"{pool}-{threads}"
            with _SESSIONS_LOCK:  # lanes ask at the same moment; export and build once
                if key not in self._sessions:
                    from .onnx_graph import onnx_session

                    assert self._onnx_root is not None
                    self._sessions[key] = onnx_session(self, pool, self._onnx_root, threads)
            out = self._sessions[key].run(None, {"pixels": x.contiguous().numpy()})[0]
            return torch.from_numpy(out)
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view, channels-last memory
            mean = torch.tensor(self.cfg.mean, device=x.device).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(self.cfg.std, device=x.device).view(1, 3, 1, 1) * 255.0
            x = (x.float() - mean) / std
            x = x.contiguous(memory_format=torch.channels_last)
            if self.precision == "bf16":
                # bf16 autocast on GPUs: tensor cores, half the memory traffic; features differ from fp32 at the
                # 1e-2 level, so the precision is part of the cache key (recipe).
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    fmap = self.module(x)
            else:
                with exact_fp32(self._device):
                    fmap = self.module(x)
            if pool == "avg":
                return fmap.float().mean(dim=(2, 3))
            # Channels-last order (h, w, C) matches the seed's Keras flatten of an NHWC feature map.
            return fmap.float().permute(0, 2, 3, 1).reshape(fmap.shape[0], -1)


def split_blocks(cfg: BackboneCfg, module: torch.nn.Module, n: int) -> tuple[list[torch.nn.Module], list[str]]:
    """The network's blocks (``cfg.blocks``) and the state-dict prefixes of its last ``n`` blocks.

    Raises
    ------
    TransferlabError
        When the backbone cannot be fine-tuned or ``n`` is not between 1 and its number of blocks less one.
    """
    cfg.check_finetune(n)
    assert cfg.blocks is not None
    blocks = cfg.blocks(module)
    names = {id(m): name for name, m in module.named_modules()}
    prefixes: list[str] = []
    for block in blocks[-n:]:
        if id(block) in names:
            prefixes.append(names[id(block)] + ".")
        else:  # a block grouped from several children (a stem, a head): its children are named
            prefixes.extend(names[id(child)] + "." for child in block.children())
    return blocks, prefixes


class TrunkBackbone(ImageBackbone):
    """The frozen part of a network below its last ``n`` blocks, as a backbone: its "features" are the activation
    map entering block ``len(blocks) - n``, flattened channels-last, computed (and cached) like any feature."""

    def __init__(self, parent: ImageBackbone, n: int) -> None:
        super().__init__(parent.cfg, parent.weights_file)
        self.n = n
        self._device = parent._device
        self.recipe_name = parent.recipe_name
        self.__dict__["weights_hash"] = parent.weights_hash
        self._shape: tuple[int, int, int] | None = None

    @cached_property
    def module(self) -> torch.nn.Module:
        """The frozen trunk in eval mode (batch norm folded), channels-last."""
        import torch

        assert self.cfg.build is not None
        full = self.cfg.build(self.weights_file).eval().requires_grad_(False)
        blocks, _ = split_blocks(self.cfg, full, self.n)
        trunk = _fuse_conv_bn(torch.nn.Sequential(*blocks[: -self.n]))
        return trunk.to(device=self._device, memory_format=torch.channels_last)

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the activation map the trunk gives."""
        if self._shape is None:
            import torch

            with torch.inference_mode():
                out = self.module(torch.zeros(1, *self.cfg.input_size, device=self._device))
            self._shape = (int(out.shape[1]), int(out.shape[2]), int(out.shape[3]))
        return self._shape

    def recipe(self, pool: str) -> dict[str, Any]:
        """The network's recipe, cut before its last ``n`` blocks."""
        return {**super().recipe(pool), "trunk_without_last_blocks": self.n}

    def row_width(self, pool: str) -> int:
        """Values per row: the whole activation map."""
        return int(np.prod(self.map_shape))
