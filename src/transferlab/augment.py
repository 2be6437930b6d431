"""Augmentation: the seed's seven — rotate, shear, blur, flip, brighten, darken, invert — applied randomly together.

With a frozen backbone nothing is pushed through the network per epoch: each training image gets ``copies``
augmented versions, featurized once and cached under a key made of the image's content hash, the augmentation
config and the copy index. The same key always gives the same augmented pixels (seeded per image and copy).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._atomic import atomic_savefig
from .decode import as_rgb, read_rgb
from .errors import TransferlabError


@dataclass(frozen=True)
class Op:
    """One augmentation: applied with probability ``p`` at strength ``strength`` (meaning depends on the op)."""

    p: float
    strength: float = 0.0


def _default_ops() -> dict[str, Op]:
    return {
        "rotate": Op(0.5, 15.0),  # degrees, uniform in ±strength
        "shear": Op(0.3, 10.0),  # degrees, uniform in ±strength
        "blur": Op(0.2, 1.5),  # Gaussian sigma, uniform in [0.1, strength]
        "flip": Op(0.5),  # horizontal
        "brighten": Op(0.3, 0.4),  # brightness factor 1 + uniform[0, strength]
        "darken": Op(0.3, 0.4),  # brightness factor 1 - uniform[0, strength]
        "invert": Op(0.05),
    }


@dataclass(frozen=True)
class AugmentConfig:
    """The seed's augmentations with probability and strength each, and how many copies per training image."""

    copies: int = 2
    ops: dict[str, Op] = field(default_factory=_default_ops)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Build from a config table: ``copies = 2`` and ``rotate = {p = 0.5, strength = 15}`` etc."""
        ops = _default_ops()
        copies = int(d.get("copies", 2))
        for name, v in d.items():
            if name == "copies":
                continue
            if name not in ops:
                raise TransferlabError(f"augment.{name}: unknown augmentation; choose from {', '.join(ops)}")
            if not isinstance(v, dict) or not set(v) <= {"p", "strength"}:
                raise TransferlabError(f"augment.{name}: expected a table like {{p = 0.5, strength = 10}}")
            ops[name] = Op(float(v.get("p", ops[name].p)), float(v.get("strength", ops[name].strength)))
            if not 0.0 <= ops[name].p <= 1.0:
                raise TransferlabError(f"augment.{name}.p = {ops[name].p}: must be between 0 and 1")
        if copies < 1:
            raise TransferlabError(f"augment.copies = {copies}: must be at least 1")
        return cls(copies=copies, ops=ops)

    def key(self) -> str:
        """Short hash of the config (part of cache keys)."""
        blob = json.dumps({"copies": self.copies, "ops": {k: asdict(v) for k, v in self.ops.items()}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def augment_image(img: Any, cfg: AugmentConfig, seed: int) -> Any:
    """One augmented copy of a PIL RGB image, deterministic for a given ``seed``.

    torchvision.transforms.v2 does the geometry and colour; probabilities and strengths are drawn here from a
    seeded generator so the result does not depend on global random state or on which process runs it.
    """
    import numpy as np
    import torchvision.transforms.v2.functional as F

    rng = np.random.default_rng(seed)
    o = cfg.ops
    rotate, shear = rng.random() < o["rotate"].p, rng.random() < o["shear"].p
    if rotate or shear:
        angle = float(rng.uniform(-o["rotate"].strength, o["rotate"].strength)) if rotate else 0.0
        skew = float(rng.uniform(-o["shear"].strength, o["shear"].strength)) if shear else 0.0
        img = F.affine(img, angle=angle, translate=[0, 0], scale=1.0, shear=[skew, 0.0])
    if rng.random() < o["blur"].p:
        sigma = float(rng.uniform(0.1, max(0.1, o["blur"].strength)))
        img = F.gaussian_blur(img, kernel_size=[2 * int(3 * sigma) + 1] * 2, sigma=[sigma, sigma])
    if rng.random() < o["flip"].p:
        img = F.horizontal_flip(img)
    if rng.random() < o["brighten"].p:
        img = F.adjust_brightness(img, 1.0 + float(rng.uniform(0, o["brighten"].strength)))
    if rng.random() < o["darken"].p:
        img = F.adjust_brightness(img, max(0.05, 1.0 - float(rng.uniform(0, o["darken"].strength))))
    if rng.random() < o["invert"].p:
        img = F.invert(img)
    return img


class AugmentedImages(Sequence):
    """Lazy sequence of augmented copies: item ``i * copies + k`` is copy ``k`` of image ``i``.

    Nothing is decoded until a copy is needed, and copies whose features are cached are never decoded at all.
    """

    def __init__(self, paths: Sequence[Any], content_hashes: Sequence[str], cfg: AugmentConfig) -> None:
        self.paths = list(paths)
        self.hashes = list(content_hashes)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths) * self.cfg.copies

    def __getitem__(self, j: int) -> Any:  # type: ignore[override]
        i, k = divmod(j, self.cfg.copies)
        seed = int(hashlib.sha256(f"{self.hashes[i]}:{k}".encode()).hexdigest()[:12], 16)
        return augment_image(as_rgb(self.paths[i]), self.cfg, seed)

    def peek(self, j: int) -> None:
        """Copy ``j`` is an image made in memory, not a file (:func:`~transferlab.gallery.gallery_paths`)."""
        if not 0 <= j < len(self):
            raise IndexError(j)

    def keys(self) -> list[str]:
        """Cache keys: content hash + augmentation config + copy index."""
        return [f"{h}-aug{self.cfg.key()}-{k}" for h in self.hashes for k in range(self.cfg.copies)]


def augmentation_grid(path: str, cfg: AugmentConfig, out: Any, n: int = 8) -> None:
    """Save a PNG grid of one image and ``n`` augmented copies, as the seed's report showed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = read_rgb(path)
    img.thumbnail((256, 256))
    fig, axes = plt.subplots(1, n + 1, figsize=(2.0 * (n + 1), 2.3))
    axes[0].imshow(img)
    axes[0].set_title("original", fontsize=9)
    for k, ax in enumerate(axes[1:]):
        ax.imshow(augment_image(img, cfg, seed=k))
        ax.set_title(f"copy {k}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=90)
    plt.close(fig)
