"""Held-out accuracy of whole-image ImageNet features against face embeddings, over several seeds, with the open set.

    python benchmarks/accuracy.py [--seeds 5] [--test-size 0.25] [--only TEXT]

Each seed draws its own stratified, group-aware 75/25 split of the bundled presidents photos; every pipeline sees
the same splits. Prints Markdown tables, mean ± 95% t-interval over seeds:

- accuracy as `predict` answers (a known person answered `unknown` is wrong), the most probable class (closed set,
  as the seed measured), per `kind`, the worst class among web photos, and known people answered `unknown`;
- strangers: with each class left out of training in turn, the share of its held-out photos answered `unknown`;
- few photos per class (3 and 25): accuracy as answered at every seed;
- with ``--audit`` (on by default for the bundled data): the same figures on the held-out photos that show the
  labelled president, i.e. without the photos that ``benchmarks/presidents_audit.csv`` marks ``not-shown`` (he is
  not in the photo) or ``two-presidents`` (two of the four classes in one photo); ``shows`` and ``unclear`` stay.
  Training is unchanged; only the evaluation side drops them. The audit lists every photo that the default model
  got wrong out of fold (5-fold, 2 repeats; ``benchmarks/audit_candidates.py`` lists them), each looked at by eye;
  the other photos were not inspected one by one.

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
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
import transferlab.kinds.faces as pipeline  # noqa: E402  (the face kind holds the open-set rule)
from transferlab.evaluate import fmt_ci  # noqa: E402
from transferlab.split import split_table  # noqa: E402

BEFORE = {"prototypes": 1, "threshold_prior": None}  # the open-set rule up to issue 17: the class mean, no prior
AUDIT = REPO / "benchmarks" / "presidents_audit.csv"
CONFIGURED_HEAD_CHOOSES = {"choice_estimator": None, "choice_folds": 5}  # the MIL lever, out of fold


def register_flip() -> None:
    """``sface_flip``: SFace with test-time flip (each face and its mirror image embedded, averaged)."""
    import dataclasses

    from transferlab.backbones import get_backbone_cfg, list_backbones, register_backbone

    if "sface_flip" not in list_backbones():
        base = get_backbone_cfg("sface")
        register_backbone(dataclasses.replace(base, name="sface_flip", face=dataclasses.replace(base.face, flip=True)))


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
    ("edgeface_xs (faces, MIL) → logreg, default open set (opt-in, non-commercial)", {"backbone": "edgeface_xs"}, {}),
    (
        "sface + EdgeFace-XS fused (`sface_edgeface`) → logreg (opt-in, non-commercial)",
        {"backbone": "sface_edgeface"},
        {},
    ),
]


def collect(rows: dict[str, list[float]], m: dict[str, Any]) -> None:
    """Append one seed's metrics to the table's columns."""
    rows["all"].append(m["accuracy"])
    rows["closed"].append(m["accuracy_closed_set"])
    rows["crop"].append(m["groups"]["aligned-face-crop"]["accuracy"])
    web = m["groups"]["web-photo"]
    rows["web"].append(web["accuracy"])
    rows["worst"].append(min(v["accuracy"] for v in web["per_class"].values()))
    rows["unknown"].append(m["unknown_rate"])


def cells(rows: dict[str, list[float]]) -> list[str]:
    """One table row's cells, mean ± 95% CI over seeds."""
    out = [fmt_ci(rows[k]) for k in ("all", "closed", "crop", "web", "worst")]
    out.append(fmt_ci(rows["unknown"]) if rows["unknown"] and np.nanmax(rows["unknown"]) > 0 else "—")
    out.append(fmt_ci(rows["strange"]) if rows["strange"] else "—")
    return out


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


def audited_out(data: Path, audit: Path | None) -> set[str]:
    """Paths (as the intake table spells them) of the photos the audit drops from the evaluation side."""
    if audit is None:
        return set()
    rows = pd.read_csv(audit)
    bad = rows.loc[rows["verdict"].isin(["not-shown", "two-presidents"]), "file"]
    return {str(data / f) for f in bad}


def kept_test(result: Any, dropped: set[str]) -> pd.DataFrame:
    """A training run's held-out rows without the audited photos (the evaluation side of the audited view)."""
    test = result.intake.table.iloc[result.split.test]
    return test[~test["path"].astype(str).isin(dropped)].reset_index(drop=True)


def strangers(
    data: Path, seed: int, test_size: float, kw: dict[str, Any], cache: Path | None, dropped: set[str] = frozenset()
) -> tuple[float, float]:
    """Each class left out of training in turn: the share of its held-out photos (with a face) answered unknown,
    over all of them and over those not in ``dropped``."""
    got = transferlab.Classifier(cache_dir=cache).read(data)
    table = got.table
    split = split_table(table, test_size=test_size, seed=seed)
    rates, kept = [], []
    for c in sorted(table["label"].unique()):
        train = table.iloc[split.train]
        train = train[train["label"] != c]
        test = table.iloc[split.test]
        test = test[test["label"] == c]
        clf = transferlab.Classifier(**kw, cache_dir=cache).fit_sources(
            train["path"].tolist(), train["label"].astype(str), train["content_hash"].tolist()
        )
        paths = test["path"].tolist()
        answers = [(p.label, q) for p, q in zip(clf.predict_images(paths), paths, strict=True) if p.error is None]
        rates.append(np.mean([a == "unknown" for a, _ in answers]))
        kept.append(np.mean([a == "unknown" for a, q in answers if str(q) not in dropped]))
    return float(np.mean(rates)), float(np.mean(kept))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-size", type=float, default=0.25)
    ap.add_argument(
        "--only", help="run only the rows whose name contains this text; several as 'a|b' (e.g. 'fused|few photos')"
    )
    ap.add_argument(
        "--audit", default=None, help="label audit CSV (file, verdict, finding); default: the bundled data's own"
    )
    ap.add_argument("--no-audit", action="store_true", help="skip the audited view")
    ap.add_argument(
        "--few-shot-backbones",
        default="sface",
        help="backbones of the few-photos rows, comma-separated (e.g. sface,edgeface_xs)",
    )
    args = ap.parse_args()
    parts = [t.strip().lower() for t in (args.only or "").split("|") if t.strip()]
    wanted = (lambda name: any(t in name.lower() for t in parts)) if parts else (lambda name: True)
    data = Path(args.data)
    bundled = data.resolve() == (REPO / "data" / "presidents").resolve()
    audit = Path(args.audit) if args.audit else AUDIT if bundled else None
    audit = None if args.no_audit else audit
    dropped = audited_out(data, audit)
    audited: list[str] = []
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
            clean: dict[str, list[float]] = {k: [] for k in rows}
            with open_set(rule):
                for seed in seeds:
                    r = transferlab.train(
                        data, Path(tmp) / "m", seed=seed, test_size=args.test_size,
                        manifest=data / "manifest.csv", group_by="kind", cache_dir=cache, **kw,
                    )  # fmt: skip
                    collect(rows, r.metrics)
                    if dropped:
                        collect(clean, r.classifier.evaluate_table(kept_test(r, dropped), group_by="kind")[0])
                    if kw["backbone"] != "mobilenet_v2" and "efficientnet" not in kw["backbone"]:
                        every, kept = strangers(data, seed, args.test_size, kw, cache, dropped)
                        rows["strange"].append(every)
                        clean["strange"].append(kept)
            print(f"| {name} | " + " | ".join(cells(rows)) + " |", flush=True)
            if dropped:
                audited.append(f"| {name} | " + " | ".join(cells(clean)) + " |")
        if audited:
            print(
                f"\nThe same, on held-out photos that show the labelled president ({len(dropped)} photos dropped from "
                f"the evaluation side by {audit.name}):\n"
            )
            print("\n".join(audited), flush=True)

        if not wanted("few photos per class"):
            return
        extra = " | as answered, audited photos, per seed | lowest" if dropped else ""
        print(
            "\n| few photos per class, every seed | accuracy (as answered) per seed | lowest "
            f"| most probable class per seed | known answered unknown per seed{extra} |"
        )
        print("|---|---|---:|---|---|" + ("---|---:|" if dropped else ""))
        rules = [
            ("open set as before", BEFORE, "sface"),
            *(("default", {}, b) for b in args.few_shot_backbones.split(",")),
        ]
        for n in (3, 25):
            for label, rule, backbone in rules:
                ms, kept = [], []
                with open_set(rule):
                    for seed in seeds:
                        r = transferlab.train(
                            data, Path(tmp) / "m", seed=seed, per_class=n, test_size=args.test_size,
                            cache_dir=cache, backbone=backbone,
                        )  # fmt: skip
                        ms.append(r.metrics)
                        if dropped:
                            kept.append(r.classifier.evaluate_table(kept_test(r, dropped))[0]["accuracy"])
                accs = [m["accuracy"] for m in ms]
                closed = ", ".join(f"{m['accuracy_closed_set']:.3f}" for m in ms)
                unknown = ", ".join(f"{m['unknown_rate']:.1%}" for m in ms)
                tail = f" | {', '.join(f'{a:.3f}' for a in kept)} | {min(kept):.3f}" if kept else ""
                print(
                    f"| {n} per class, {backbone}, {label} | {', '.join(f'{a:.3f}' for a in accs)} | {min(accs):.3f} "
                    f"| {closed} | {unknown}{tail} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
