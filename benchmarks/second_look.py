"""What the second look for photos with no face recovers, and what it costs (issue 28, item 5).

    python benchmarks/second_look.py [--backbone sface] [--photos 60]

The bundled photos all have a face, so the photos with none are made from held-out ones (seed 0's 25 %, never
trained on): **shrunk** (the photo scaled so its longer side is 96 px: a face crop's face becomes ~60 px, a web
photo's ~10 px, below YuNet's reach), **small in a big photo** (the photo scaled to 1/6 and pasted into a 2,400 ×
1,600 grey canvas: the shrink to 640 px leaves the face a few pixels), **turned** (rotated 50° and 90°), and
**black-and-white, turned** (greyscale and rotated 50°). For each: the photos where the first look finds no face,
those the second look finds one in, and how many of those are then answered with their true label by a model
trained on the other 75 % (as `predict` answers: `unknown` is wrong). Cost: featurizing the variants with and
without the second look, and the untouched photos with and without it (equal: a photo with a face is looked at once).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
from transferlab.split import split_table  # noqa: E402


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def variants(img: Image.Image) -> dict[str, bytes]:
    """The hard versions of one photo."""
    w, h = img.size
    small = img.resize((max(1, round(w * 96 / max(w, h))), max(1, round(h * 96 / max(w, h)))), Image.LANCZOS)
    canvas = Image.new("RGB", (2400, 1600), (128, 128, 128))
    tiny = img.resize((max(1, w // 6), max(1, h // 6)), Image.LANCZOS)
    canvas.paste(tiny, (1500, 300))
    grey = img.convert("L").convert("RGB")
    return {
        "shrunk to 96 px": _jpeg(small),
        "small in a 2400×1600 photo": _jpeg(canvas),
        "turned 50°": _jpeg(img.rotate(50, expand=True, fillcolor=(128, 128, 128))),
        "turned 90°": _jpeg(img.rotate(90, expand=True)),
        "black-and-white, turned 50°": _jpeg(grey.rotate(50, expand=True, fillcolor=(128, 128, 128))),
    }


def _no_faces(n: int) -> list:
    """Photos with no face in them: noise, gradients and stripes at photo sizes."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        h, w = (480, 640) if k % 2 else (1200, 1600)
        if k % 3 == 0:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif k % 3 == 1:
            a = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
        else:
            a = ((np.indices((h, w)).sum(0) // (8 + k)) % 2 * 255).astype(np.uint8)[:, :, None].repeat(3, 2)
        out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--photos", type=int, default=60, help="held-out photos to make variants of")
    args = ap.parse_args()
    data = REPO / "data" / "presidents"
    table = transferlab.Classifier().read(data).table
    split = split_table(table, test_size=0.25, seed=0)
    train, test = table.iloc[split.train], table.iloc[split.test].sample(frac=1.0, random_state=0)
    test = test.head(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for look in (False, True):
            models[look] = transferlab.Classifier(
                backbone=args.backbone, second_look=look, cache_dir=Path(tmp) / "cache"
            ).fit_sources(train["path"].tolist(), train["label"].astype(str), train["content_hash"].tolist())
        made = {name: [] for name in variants(Image.new("RGB", (8, 8)))}
        labels = test["label"].astype(str).tolist()
        for path in test["path"]:
            with Image.open(path) as img:
                for name, data_ in variants(img.convert("RGB")).items():
                    made[name].append(data_)
        print(f"{args.backbone}: {len(test)} held-out photos per variant, model trained on {len(train)} others\n")
        print(
            "| variant | no face at first | found at a second look | … answered right | … `unknown` | … another "
            "president | time, one look | two looks |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, photos in made.items():
            seconds, preds = {}, {}
            for look in (False, True):  # each model's features of the variants are computed here, once
                t = time.perf_counter()
                preds[look] = models[look].predict_images(photos)
                seconds[look] = time.perf_counter() - t
            missing = [i for i, p in enumerate(preds[False]) if p.error == "no face found"]
            found = [i for i in missing if preds[True][i].error is None]
            right = [i for i in found if preds[True][i].label == labels[i]]
            unknown = [i for i in found if preds[True][i].label == "unknown"]
            wrong = len(found) - len(right) - len(unknown)
            print(
                f"| {name} | {len(missing)} | {len(found)} | {len(right)} | {len(unknown)} | {wrong} | "
                f"{seconds[False]:.1f} s | {seconds[True]:.1f} s |",
                flush=True,
            )
        faceless = [_jpeg(Image.fromarray(a)) for a in _no_faces(30)]
        for look in (False, True):
            t = time.perf_counter()
            out = models[look].predict_images(faceless)
            print(
                f"photos with no face at all (noise, gradients, textures), second look {'on ' if look else 'off'}: "
                f"{sum(p.error is None for p in out)} of {len(out)} answered, {time.perf_counter() - t:.1f} s"
            )
        plain = test["path"].tolist()
        for look in (False, True):  # photos with a face, never featurized before: the second look never runs
            t = time.perf_counter()
            out = models[look].predict_images(plain)
            print(f"untouched photos, second look {'on ' if look else 'off'}: {time.perf_counter() - t:.1f} s, "
                  f"{sum(p.error is not None for p in out)} without a face")  # fmt: skip


if __name__ == "__main__":
    main()
