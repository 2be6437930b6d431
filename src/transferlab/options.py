"""Options: the one declared, validated description of a model and of where it runs.

The command line, the Python API (:class:`transferlab.Classifier`, :func:`transferlab.train`), the study and the web
server all build an :class:`Options` and read defaults from it, so a default or an allowed value is written once
(here), and a bad value fails before anything is loaded, naming the option and the allowed values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from .backbones import get_backbone_cfg
from .choices import DEFAULT_BACKBONE, EngineName, FaceChoice, FacesOutput, HeadName, Pool, Recipe, Runtime
from .errors import TransferlabError
from .features import FeatureOptions
from .finetune import FinetuneConfig
from .fitted import check_head_params, head_spec
from .kinds import ModelKind, kind_of

__all__ = [
    "DEFAULT_BACKBONE",
    "EngineName",
    "FaceChoice",
    "FacesOutput",
    "HeadName",
    "Options",
    "Pool",
    "Recipe",
    "Runtime",
    "validate_options",
]


class Options(FeatureOptions):
    """A model's options: its backbone and head, how it treats faces, and where features are computed.

    The fields of :class:`~transferlab.features.FeatureOptions` (backbone, pool, weights, download, cache_dir,
    use_cache, batch_size, num_workers, device, runtime, recipe, verbose), and:

    Parameters
    ----------
    head
        ``logreg``, ``svm`` or ``mlp`` (the seed's head).
    head_params
        Keyword arguments for the head (e.g. ``{"epochs": 30}`` for ``mlp``); checked against the head's parameters.
    face_choice
        Face backbones only: ``mil`` picks the face that carries the label in training and the most confident
        known face in prediction; ``largest`` always uses the largest face (the simple baseline).
    fallback
        Face backbones only: a whole-image backbone whose logistic-regression head answers for photos in which no
        face is found (otherwise they get "no face found").
    finetune, finetune_params
        Train the last ``finetune`` blocks of the network with the head (0: frozen): whole-image backbones, and
        ``sface``'s embedder (on the face that carries each photo's label; it overfits on a few hundred photos),
        with these :class:`~transferlab.finetune.FinetuneConfig` parameters (e.g. ``{"epochs": 10}``).

    Every field is saved with the model except those marked as chosen per run (``FeatureOptions.runtime_fields``):
    adding an option here is all a saved model, ``load()`` and Spark's executors need.
    """

    head: HeadName = Field(HeadName.logreg, description="logreg, svm or mlp")
    head_params: dict[str, Any] = Field(default_factory=dict, description="the head's keyword arguments")
    face_choice: FaceChoice = Field(FaceChoice.mil, description="mil or largest")
    fallback: str | None = Field(None, description="whole-image backbone answering photos without a face")
    finetune: int = Field(0, ge=0, description="top blocks of the network trained with the head")
    finetune_params: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig parameters")

    @field_validator("fallback")
    @classmethod
    def _registered_fallback(cls, name: str | None) -> str | None:
        if name is not None:
            get_backbone_cfg(name)  # raises with the list of choices
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Options:
        check_head_params(self.head.value, self.head_params)  # raises naming the head's parameters
        self.kind.check(self)  # e.g. --fallback: face models only, and a whole-image one
        if self.finetune:
            get_backbone_cfg(self.backbone).check_finetune(self.finetune)
            self.finetune_config()  # raises naming a bad parameter
        elif self.finetune_params:
            raise TransferlabError("finetune parameters given without --finetune N")
        return self

    @property
    def kind(self) -> ModelKind:
        """The kind of model the backbone makes (:mod:`transferlab.kinds`)."""
        return kind_of(self.backbone)

    def finetune_config(self) -> FinetuneConfig:
        """How the top blocks are trained (``finetune`` > 0)."""
        return FinetuneConfig.from_params(self.finetune, self.finetune_params)

    def make_head(self) -> Any:
        """A new, unfitted head with these options' parameters."""
        from .heads import make_head  # scikit-learn: only where a head is fitted (a saved model answers without it)

        return make_head(self.head.value, **self.head_params)

    def seeded(self, seed: int) -> Options:
        """These options with the head's ``random_state`` set to ``seed``, where the head has one and the user did
        not set it."""
        if "random_state" in head_spec(self.head.value).params and "random_state" not in self.head_params:
            return self.model_copy(update={"head_params": {**self.head_params, "random_state": seed}})
        return self

    def saved(self) -> dict[str, Any]:
        """The options a saved model keeps (JSON values): every field but those chosen per run."""
        return self.model_dump(mode="json", include=set(self.model_fields_saved()))


_FLAGS = {"batch_size": "batch size", "num_workers": "workers", "face_choice": "face choice"}


def validate_options(**values: Any) -> Options:
    """Build :class:`Options`, turning any invalid value into one :class:`TransferlabError` line.

    The line names the option, the value and what is allowed, e.g. ``pool 'max': choose one of: avg, flatten``.
    """
    # None stands for "the default" (a flag not given), except where None is the default itself (no fallback).
    fields = Options.model_fields
    values = {k: v for k, v in values.items() if v is not None or (k in fields and fields[k].default is None)}
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
