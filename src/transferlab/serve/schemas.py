"""The web API's response models: they are the OpenAPI schema, and FastAPI checks every answer against them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Face(BaseModel):
    """One face (face models) or the whole photo (whole-image models and the no-face fallback)."""

    box: list[float] | None = Field(
        None,
        description="x, y, width, height in pixels of the upright photo (EXIF rotation applied); "
        "absent for whole-image answers",
        min_length=4,
        max_length=4,
    )
    label: str = Field(description="the predicted class, or 'unknown' for a face not close enough to any class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    face_score: float | None = Field(None, description="face detector confidence")
    similarity: float | None = Field(None, description="cosine similarity to the predicted class's mean face")
    answer: bool = Field(description="true for the face the photo's answer comes from")


class ImageSize(BaseModel):
    """Size of the upright photo that ``box`` coordinates refer to."""

    width: int
    height: int


class Neighbour(BaseModel):
    label: str
    similarity: float
    url: str | None = Field(None, description="a small crop of the training photo, from the --gallery folder")


class Explanation(BaseModel):
    """Why (with ``serve --gallery``): the nearest training photos, similarity per class, margin to unknown."""

    neighbours: list[Neighbour]
    class_similarity: dict[str, float]
    margin: float | None = None
    face: int | None = None


class PredictResponse(BaseModel):
    """The answer for one photo."""

    faces: list[Face] = Field(description="one entry per detected face; one entry without a box for whole-image models")
    image: ImageSize
    label: str | None = Field(None, description="the photo's answer (absent when no face was found)")
    message: str | None = Field(None, description="'no face found', or how the answer was reached when unusual")
    fallback: bool | None = Field(None, description="true when a whole-image fallback model answered")
    explanation: Explanation | None = Field(None, description="why, when the server was started with --gallery")


class ErrorResponse(BaseModel):
    """Why a request was refused."""

    detail: str = Field(description="what was wrong and what to do")
    reason: str = Field(description="a short machine-readable reason, e.g. 'not an image' or 'too large'")


class GroupAccuracy(BaseModel):
    accuracy: float
    n: int


class Example(BaseModel):
    url: str
    label: str
    caption: str


class ModelInfo(BaseModel):
    """Facts about the served model."""

    backbone: str
    architecture: str | None = None
    license: str | None = Field(None, description="the backbone's weights licence")
    noncommercial: bool = Field(False, description="the weights' licence forbids commercial use")
    head: str
    classes: list[str]
    face_model: bool
    accuracy: float | None = Field(None, description="held-out accuracy from the model's training report")
    accuracy_ci95: list[float] | None = None
    n_test: int | None = Field(None, description="held-out photos the accuracy was measured on")
    group_by: str | None = None
    groups: dict[str, GroupAccuracy] | None = None
    unknown_threshold: float | None = None
    fallback: str | None = None
    recipe: str | None = Field(None, description="how features are made here: portable or fast")
    recipe_note: str | None = Field(None, description="how that differs from the model's training, if it does")
    created: str | None = None
    transferlab_version: str
    max_upload_bytes: int
    examples: list[Example] = Field(default_factory=list, description="bundled photos the page offers to try")


class Health(BaseModel):
    status: str
    model: str
