"""Options: the one declared, validated description of a model and of where it runs.

The command line, the Python API (:class:`transferlab.Classifier`, :func:`transferlab.train`), the study and the web
server all build an :class:`Options` and read defaults from it, so a default or an allowed value is written once
(here), and a bad value fails before anything is loaded, naming the option and the allowed values.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backbones import get_backbone_cfg
from .errors import TransferlabError
from .finetune import FinetuneConfig
from .heads import make_head

DEFAULT_BACKBONE = "sface"


class HeadName(enum.StrEnum):
    """Heads: scikit-learn estimators on features (:mod:`transferlab.heads`)."""

    logreg = "logreg"
    svm = "svm"
    mlp = "mlp"


class Pool(enum.StrEnum):
    """How a whole-image feature map becomes a vector."""

    avg = "avg"
    flatten = "flatten"


class Runtime(enum.StrEnum):
    """What runs a whole-image network."""

    torch = "torch"
    onnxruntime = "onnxruntime"


class Recipe(enum.StrEnum):
    """How features are made on a GPU (:func:`transferlab.backbones.device_recipe`)."""

    portable = "portable"
    fast = "fast"


class FaceChoice(enum.StrEnum):
    """Which face of a photo is learned from and answers."""

    mil = "mil"
    largest = "largest"


class EngineName(enum.StrEnum):
    """Where the featurize stage runs."""

    local = "local"
    spark = "spark"


class FacesOutput(enum.StrEnum):
    """``predict --faces``: one answer per photo, or one per face."""

    best = "best"
    all = "all"


class Options(BaseModel):
    """A model's options: backbone, head, pooling, face policy, and where features are computed.

    Parameters
    ----------
    backbone
        Registered backbone name (``transferlab backbones`` lists them).
    head
        ``logreg``, ``svm`` or ``mlp`` (the seed's head).
    pool
        ``avg``: global-average-pooled features; ``flatten``: the flattened feature map (the seed's input).
    head_params
        Keyword arguments for the head (e.g. ``{"epochs": 30}`` for ``mlp``); checked against the head's parameters.
    weights
        Local weights file for the backbone (needed offline for vgg16/resnet50/inception_v3).
    download
        Allow downloading hub weights.
    cache_dir, use_cache
        Feature cache location (default: the user's cache directory) and whether to use it.
    batch_size, num_workers
        Featurization batch size (None: 32 on the CPU, sized from free memory on a GPU) and decoding processes.
    face_choice
        Face backbones only: ``mil`` picks the face that carries the label in training and the most confident
        known face in prediction; ``largest`` always uses the largest face (the simple baseline).
    fallback
        Face backbones only: a whole-image backbone whose logistic-regression head answers for photos in which no
        face is found (otherwise they get "no face found").
    device
        Where whole-image backbones run: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda``
        or ``cuda:N``.
    runtime
        ``torch`` or ``onnxruntime`` (CPU only: the network exported once to ONNX; the same features within 1e-5).
    recipe
        ``portable``: features are the same on every device (JPEGs decoded on the CPU, fp32 without TF32 on a GPU);
        ``fast``: on a CUDA GPU, nvJPEG decoding and bf16 (several times faster there, features differ from the
        CPU's at the 1e-2 level). None: ``portable`` for training; a saved model's own recipe when it is loaded.
    finetune, finetune_params
        Train the last ``finetune`` blocks of the network with the head (0: frozen): whole-image backbones, and
        ``sface``'s embedder (on the face that carries each photo's label; it overfits on a few hundred photos),
        with these :class:`~transferlab.finetune.FinetuneConfig` parameters (e.g. ``{"epochs": 10}``).
    verbose
        Show progress bars and status lines on stderr.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    backbone: str = DEFAULT_BACKBONE
    head: HeadName = HeadName.logreg
    pool: Pool = Pool.avg
    head_params: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    download: bool = False
    cache_dir: Path | None = None
    use_cache: bool = True
    batch_size: int | None = Field(None, ge=1)
    num_workers: int | None = Field(None, ge=0)
    face_choice: FaceChoice = FaceChoice.mil
    fallback: str | None = None
    device: str = "auto"
    runtime: Runtime = Runtime.torch
    recipe: Recipe | None = None
    finetune: int = Field(0, ge=0)
    finetune_params: dict[str, Any] = Field(default_factory=dict)
    verbose: bool = False

    @field_validator("backbone", "fallback")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        if name is not None:
            get_backbone_cfg(name)  # raises with the list of choices
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise TransferlabError(f"--device {device}: choose auto, cpu, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> Options:
        make_head(self.head.value, **self.head_params)  # raises naming the head's parameters
        if self.fallback is not None:
            if not get_backbone_cfg(self.backbone).embeds_faces:
                raise TransferlabError(f"--fallback applies to face backbones only, not {self.backbone!r}")
            if get_backbone_cfg(self.fallback).embeds_faces:
                raise TransferlabError(f"--fallback {self.fallback}: must be a whole-image backbone, e.g. mobilenet_v2")
        if self.finetune:
            cfg = get_backbone_cfg(self.backbone)
            if cfg.embeds_faces and cfg.blocks is None:
                raise TransferlabError(
                    f"--finetune needs a torch network (a whole-image backbone, or sface), not {self.backbone!r}: "
                    "dlib's face descriptor cannot be trained here"
                )
            cfg.check_finetune(self.finetune)
            self.finetune_config()  # raises naming a bad parameter
        elif self.finetune_params:
            raise TransferlabError("finetune parameters given without --finetune N")
        return self

    @property
    def embeds_faces(self) -> bool:
        """True when the backbone embeds detected faces rather than whole photos."""
        return get_backbone_cfg(self.backbone).embeds_faces

    @property
    def recipe_name(self) -> str:
        """The recipe features are made with (``portable`` unless ``fast`` was chosen)."""
        return (self.recipe or Recipe.portable).value

    def finetune_config(self) -> FinetuneConfig:
        """How the top blocks are trained (``finetune`` > 0)."""
        return FinetuneConfig.from_params(self.finetune, self.finetune_params)

    def make_head(self) -> Any:
        """A new, unfitted head with these options' parameters."""
        return make_head(self.head.value, **self.head_params)

    def seeded(self, seed: int) -> Options:
        """These options with the head's ``random_state`` set to ``seed``, where the head has one and the user did
        not set it."""
        if "random_state" in self.make_head().get_params() and "random_state" not in self.head_params:
            return self.model_copy(update={"head_params": {**self.head_params, "random_state": seed}})
        return self


_FLAGS = {"batch_size": "batch size", "num_workers": "workers", "face_choice": "face choice"}


def validate_options(**values: Any) -> Options:
    """Build :class:`Options`, turning any invalid value into one :class:`TransferlabError` line.

    The line names the option, the value and what is allowed, e.g. ``pool 'max': choose one of: avg, flatten``.
    """
    values = {k: v for k, v in values.items() if v is not None or k in ("weights", "cache_dir", "fallback")}
    if isinstance(values.get("weights"), str | os.PathLike):
        values["weights"] = Path(values["weights"])
    try:
        return Options(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "options"
        name = _FLAGS.get(field, field)
        value = err.get("input")
        expected = (err.get("ctx") or {}).get("expected")
        if err["type"] == "enum" and expected:
            choices = expected.replace("'", "").replace(" or ", ", ")
            raise TransferlabError(f"unknown {name} {value!r}; choose one of: {choices}") from None
        if err["type"] == "extra_forbidden":
            raise TransferlabError(
                f"unknown option {field!r}; options are: {', '.join(Options.model_fields)}"
            ) from None
        if err["type"] in ("greater_than_equal", "greater_than"):
            raise TransferlabError(f"{name} {value}: must be at least {(err.get('ctx') or {}).get('ge', 1)}") from None
        raise TransferlabError(f"{name} {value!r}: {err['msg']}") from None
