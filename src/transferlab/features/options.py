"""What the featurize stage needs to know: which backbone and pooling, and where and how features are computed.

:class:`FeatureOptions` is the part of a model's options (:class:`transferlab.options.Options` extends it) that the
extractor, Spark's executors and the saved model read. Each field says once whether it belongs to the model (saved
with it: ``backbone``, ``pool``) or to the run (``weights``, ``device``, ``cache_dir``, ...: chosen again by whoever
loads the model), so no list of option names is written anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..backbones import get_backbone_cfg
from ..choices import DEFAULT_BACKBONE, Pool, Recipe, Runtime
from ..errors import TransferlabError

RUNTIME: dict[str, Any] = {"scope": "runtime"}  # a field's marker: chosen per run, not saved with the model


def _extra(field: Any) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def runtime_field(default: Any, description: str, **constraints: Any) -> Any:
    """A field chosen per run (not saved with the model); ``load()`` accepts it as an override."""
    return Field(default, description=description, json_schema_extra=RUNTIME, **constraints)


class FeatureOptions(BaseModel):
    """Which backbone makes the features, and where and how they are computed.

    Parameters
    ----------
    backbone
        Registered backbone name (``transferlab backbones`` lists them).
    pool
        ``avg``: global-average-pooled features; ``flatten``: the flattened feature map (the seed's input).
    weights
        Local weights file for the backbone (needed offline for vgg16/resnet50/inception_v3).
    download
        Allow downloading hub weights.
    cache_dir, use_cache
        Feature cache location (default: the user's cache directory) and whether to use it.
    batch_size, num_workers
        Featurization batch size (None: 32 on the CPU, sized from free memory on a GPU) and decoding processes.
    device
        Where the networks run: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or
        ``cuda:N``.
    runtime
        ``torch`` or ``onnxruntime`` (whole-image networks on the CPU: exported once to ONNX; the same features
        within 1e-5).
    recipe
        ``portable``: features are the same on every device (JPEGs decoded on the CPU, fp32 without TF32 on a GPU);
        ``fast``: on a CUDA GPU, nvJPEG decoding and bf16 (several times faster there, features differ from the
        CPU's at the 1e-2 level). None: ``portable`` for training; a saved model's own recipe when it is loaded.
    verbose
        Show progress bars and status lines on stderr.
    second_look
        Face backbones: when the detector finds no face in a photo, look again — enlarged, in tiles, turned each way
        — before answering "no face found" (on: photos with a face cost nothing more; ``benchmarks/second_look.py``
        measures what it recovers). Whole-image backbones have nothing to look for and ignore it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    backbone: str = Field(DEFAULT_BACKBONE, description="registered backbone name")
    pool: Pool = Field(Pool.avg, description="how a whole-image feature map becomes a vector")
    weights: Path | None = runtime_field(None, "local weights file for the backbone")
    download: bool = runtime_field(False, "allow downloading hub weights")
    cache_dir: Path | None = runtime_field(None, "feature cache directory")
    use_cache: bool = runtime_field(True, "read and write the feature cache")
    batch_size: int | None = runtime_field(None, "featurization batch size", ge=1)
    num_workers: int | None = runtime_field(None, "decoding (or face pipeline) processes", ge=0)
    device: str = runtime_field("auto", "auto, cpu, cuda or cuda:N")
    runtime: Runtime = runtime_field(Runtime.torch, "torch or onnxruntime")
    recipe: Recipe | None = runtime_field(None, "portable or fast")
    verbose: bool = runtime_field(False, "progress bars and status lines on stderr")
    second_look: bool = Field(
        True,
        description="face backbones: look again at photos in which no face is found",
        json_schema_extra={"before": False},  # models saved before it existed looked once
    )

    @field_validator("backbone")
    @classmethod
    def _registered(cls, name: str) -> str:
        get_backbone_cfg(name)  # raises with the list of choices
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise TransferlabError(f"--device {device}: choose auto, cpu, cuda or cuda:N")
        return device

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        """Names of the fields chosen per run rather than saved with a model."""
        return tuple(k for k, f in cls.model_fields.items() if _extra(f).get("scope") == "runtime")

    @classmethod
    def before_saved(cls) -> dict[str, Any]:
        """Options added since models began saving theirs, with the value that reproduces what a model saved before
        them did (declared on the field: ``json_schema_extra={"before": value}``)."""
        return {k: _extra(f)["before"] for k, f in cls.model_fields.items() if "before" in _extra(f)}

    @classmethod
    def model_fields_saved(cls) -> tuple[str, ...]:
        """Names of the fields saved with a model (the others are chosen per run)."""
        return tuple(k for k in cls.model_fields if k not in cls.runtime_fields())

    @property
    def recipe_name(self) -> str:
        """The recipe features are made with (``portable`` unless ``fast`` was chosen)."""
        return (self.recipe or Recipe.portable).value

    def features_of(self, backbone: str) -> FeatureOptions:
        """The featurize options of another backbone (a fallback's) run alongside these: same place and cache,
        average pooling, its own registered weights."""
        fields = {k: getattr(self, k) for k in FeatureOptions.runtime_fields()}
        return FeatureOptions(**{**fields, "backbone": backbone, "pool": Pool.avg, "weights": None})
