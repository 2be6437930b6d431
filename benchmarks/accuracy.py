"""Held-out accuracy of whole-image ImageNet features against face embeddings, over several seeds, with the open set.

    python benchmarks/accuracy.py [--seeds 5] [--test-size 0.25] [--only TEXT]

Each seed draws its own stratified, group-aware 75/25 split of the bundled presidents photos; every pipeline sees
the same splits. Prints Markdown tables, mean ± 95% t-interval over seeds:

- accuracy as `predict` answers (a known person answered `unknown` is wrong), the most probable class (closed set,
  as the seed measured), per `kind`, the worst class among web photos, and known people answered `unknown`;
- strangers: with each class left out of training in turn, the share of its held-out photos answered `unknown`;
- few photos per class (3 and 25): accuracy as answered at every seed.

Features are cached, so a rerun takes a minute or two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
import transferlab.pipeline as pipeline  # noqa: E402
from transferlab.evaluate import fmt_ci  # noqa: E402
from transferlab.split import split_table  # noqa: E402

BEFORE = {"prototypes": 1, "threshold_prior": None}  # the open-set rule up to issue 17: the class mean, no prior
CONFIGURED_HEAD_CHOOSES = {"choice_estimator": None, "choice_folds": 5}  # the MIL lever, out of fold


def register_flip() -> None:
    """``sface_flip``: SFace with test-time flip (each face and its mirror image embedded, averaged)."""
    import dataclasses

    from transferlab.backbones import get_backbone_cfg, list_backbones, register_backbone

    if "sface_flip" not in list_backbones():
        base = get_backbone_cfg("sface")
        register_backbone(dataclasses.replace(base, name="sface_flip", extra={**base.extra, "flip": True}))


PIPELINES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("mobilenet_v2 (whole image) → logreg", {"backbone": "mobilenet_v2"}, {}),
    ("mobilenet_v2 (whole image), last 2 blocks fine-tuned → logreg", {"backbone": "mobilenet_v2", "finetune": 2}, {}),
    ("efficientnet_lite0 (whole image) → logreg", {"backbone": "efficientnet_lite0"}, {}),
    (
        "efficientnet_lite0 (whole image), last 2 blocks fine-tuned → logreg",
        {"backbone": "efficientnet_lite0", "finetune": 2},
        {},
    ),
    ("largest face → SFace → logreg (baseline)", {"backbone": "sface", "face_choice": "largest"}, BEFORE),
    ("dlib_resnet (faces, MIL) → logreg", {"backbone": "dlib_resnet"}, BEFORE),
    ("sface (faces, MIL) → logreg, open set as before (class mean, no cap)", {"backbone": "sface"}, BEFORE),
    ("… + 4 prototypes per class", {"backbone": "sface"}, {"prototypes": 4, "threshold_prior": None}),
    (
        "… + threshold shrunk towards SFace's same-person cosine (0.363, worth 20 faces) — default",
        {"backbone": "sface"},
        {},
    ),
    ("… + test-time flip (face and mirror image embedded, averaged)", {"backbone": "sface_flip"}, {}),
    ("… + MIL choice by the configured head, out of fold", {"backbone": "sface"}, {"mil": CONFIGURED_HEAD_CHOOSES}),
    (
        "… + flip + MIL by the configured head (combined)",
        {"backbone": "sface_flip"},
        {"mil": CONFIGURED_HEAD_CHOOSES},
    ),
    ("sface + dlib fused (`sface_dlib`, faces, MIL) → logreg, default open set", {"backbone": "sface_dlib"}, {}),
    ("… fused + MIL by the configured head (combined)", {"backbone": "sface_dlib"}, {"mil": CONFIGURED_HEAD_CHOOSES}),
    ("sface (faces, MIL) → svm, default open set", {"backbone": "sface", "head": "svm"}, {}),
    ("sface, embedder's last 2 blocks fine-tuned (faces, MIL) → logreg", {"backbone": "sface", "finetune": 2}, {}),
]


@contextmanager
def open_set(rule: dict[str, Any]):
    """Run with another open-set rule (a measurement knob, not a user option)."""
    rule = dict(rule)
    mil = rule.pop("mil", {})
    saved, saved_mil = dict(pipeline.OPEN_SET), dict(pipeline.MIL_CHOICE)
    pipeline.OPEN_SET.update(rule)
    pipeline.MIL_CHOICE.update(mil)
    try:
        yield
    finally:
        pipeline.OPEN_SET.clear()
        pipeline.OPEN_SET.update(saved)
        pipeline.MIL_CHOICE.clear()
        pipeline.MIL_CHOICE.update(saved_mil)


def strangers(data: Path, seed: int, test_size: float, kw: dict[str, Any], cache: Path) -> float:
    """Each class left out of training in turn: the share of its held-out photos (with a face) answered unknown."""
    got = transferlab.Classifier(cache_dir=cache).read(data)
    table = got.table
    split = split_table(table, test_size=test_size, seed=seed)
    rates = []
    for c in sorted(table["label"].unique()):
        train = table.iloc[split.train]
        train = train[train["label"] != c]
        test = table.iloc[split.test]
        test = test[test["label"] == c]
        clf = transferlab.Classifier(**kw, cache_dir=cache).fit_sources(
            train["path"].tolist(), train["label"].astype(str), train["content_hash"].tolist()
        )
        answers = [p.label for p in clf.predict_images(test["path"].tolist()) if p.error is None]
        rates.append(np.mean([a == "unknown" for a in answers]))
    return float(np.mean(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-size", type=float, default=0.25)
    ap.add_argument("--only", help="run only the rows whose name contains this text (e.g. 'fused', 'few photos')")
    args = ap.parse_args()
    wanted = (lambda name: args.only.lower() in name.lower()) if args.only else (lambda name: True)
    data = Path(args.data)
    seeds = range(args.seeds)
    register_flip()
    with tempfile.TemporaryDirectory() as tmp:
        cache = None  # the user's cache (TRANSFERLAB_CACHE_DIR or ~/.cache/transferlab): features shared with runs
        print(
            f"| pipeline ({args.seeds} seeds, mean ± 95% CI) | accuracy (as answered) | most probable class | "
            "aligned-face-crop | web-photo | worst web-photo class | known answered unknown | "
            "strangers answered unknown |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, kw, rule in filter(lambda row: wanted(row[0]), PIPELINES):
            rows: dict[str, list[float]] = {
                k: [] for k in ("all", "closed", "crop", "web", "worst", "unknown", "strange")
            }
            with open_set(rule):
                for seed in seeds:
                    r = transferlab.train(
                        data, Path(tmp) / "m", seed=seed, test_size=args.test_size,
                        manifest=data / "manifest.csv", group_by="kind", cache_dir=cache, **kw,
                    )  # fmt: skip
                    m = r.metrics
                    rows["all"].append(m["accuracy"])
                    rows["closed"].append(m["accuracy_closed_set"])
                    rows["crop"].append(m["groups"]["aligned-face-crop"]["accuracy"])
                    web = m["groups"]["web-photo"]
                    rows["web"].append(web["accuracy"])
                    rows["worst"].append(min(v["accuracy"] for v in web["per_class"].values()))
                    rows["unknown"].append(m["unknown_rate"])
                    if kw["backbone"] != "mobilenet_v2" and "efficientnet" not in kw["backbone"]:
                        rows["strange"].append(strangers(data, seed, args.test_size, kw, cache))
            cells = [fmt_ci(rows[k]) for k in ("all", "closed", "crop", "web", "worst")]
            cells.append(fmt_ci(rows["unknown"]) if rows["unknown"] and np.nanmax(rows["unknown"]) > 0 else "—")
            cells.append(fmt_ci(rows["strange"]) if rows["strange"] else "—")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

        if not wanted("few photos per class"):
            return
        print(
            "\n| few photos per class (sface), every seed | accuracy (as answered) per seed | lowest "
            "| most probable class per seed | known answered unknown per seed |"
        )
        print("|---|---|---:|---|---|")
        for n in (3, 25):
            for label, rule in (("open set as before", BEFORE), ("default", {})):
                with open_set(rule):
                    ms = [
                        transferlab.train(
                            data, Path(tmp) / "m", seed=seed, per_class=n, test_size=args.test_size,
                            cache_dir=cache,
                        ).metrics
                        for seed in seeds
                    ]  # fmt: skip
                accs = [m["accuracy"] for m in ms]
                closed = ", ".join(f"{m['accuracy_closed_set']:.3f}" for m in ms)
                unknown = ", ".join(f"{m['unknown_rate']:.1%}" for m in ms)
                print(
                    f"| {n} per class, {label} | {', '.join(f'{a:.3f}' for a in accs)} | {min(accs):.3f} | {closed} "
                    f"| {unknown} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
