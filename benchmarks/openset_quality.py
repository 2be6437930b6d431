"""Does an `unknown` rule that knows face quality beat the similarity alone? (issue 28, item 4)

    python benchmarks/openset_quality.py [--backbone sface] [--seeds 5] [--per-class N]

The known people answered `unknown` are mostly small, bowed and turned faces, whose similarities are low for
everyone. This asks whether the face's quality — its size (the box's shorter side, in pixels of the photo) and the
detector's score — lets a rule keep more of them at the same share of strangers rejected.

Per seed (the accuracy benchmark's 75/25 splits): the default face model is fitted on the training side. Its rule is
the similarity of the answer face to its class's nearest prototype against the calibrated threshold. The
quality-aware rule is calibrated on the **training photos only**, as the default is: 5-fold, each fold's chosen faces
scored against prototypes built from the other folds, against their own class (a known person) and every other class
(a stand-in for a stranger); a logistic regression on (similarity, log size, detector score) separates the two, and
its score's threshold keeps 98 % of own-class faces and admits 1 % of the others (the default's targets). Both rules
then answer the held-out photos (known people) and the photos of each class left out of training in turn
(strangers). The hindsight rows read each score's threshold off the strangers themselves at 97 % rejected: no
calibration can do better.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
from transferlab.backbones import create_backbone, face_areas, face_boxes, face_embeddings, face_scores  # noqa: E402
from transferlab.facebag import class_prototypes, prototype_similarity  # noqa: E402
from transferlab.features import featurize_faces, open_cache  # noqa: E402
from transferlab.kinds import kind_of  # noqa: E402
from transferlab.options import validate_options  # noqa: E402
from transferlab.split import split_table  # noqa: E402


def quality(rows: np.ndarray) -> np.ndarray:
    """``(k, 2)``: log of the box's shorter side (pixels) and the detector's score, per face."""
    boxes = face_boxes(rows)
    return np.stack([np.log(np.maximum(np.minimum(boxes[:, 2], boxes[:, 3]), 1.0)), face_scores(rows)], axis=1)


def calibration(head, bags, rows, y, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold (similarity, quality) of the training photos' chosen faces against their own class (label 1)
    and every other class (label 0), as the default's threshold calibration scores them."""
    X = np.stack([b[c] for b, c in zip(bags, head.chosen_, strict=True)])
    Q = np.stack([quality(r)[c] for r, c in zip(rows, head.chosen_, strict=True)])
    fold = np.random.default_rng(seed).permutation(len(X)) % folds
    sims, quals, own = [], [], []
    for f in range(folds):
        fit, held = fold != f, fold == f
        present = np.unique(y[fit])
        protos, owner = class_prototypes(X[fit], y[fit], present, head.prototypes)
        s = prototype_similarity(X[held], protos, owner, len(present))
        for j, c in enumerate(present):
            sims.append(s[:, j])
            quals.append(Q[held])
            own.append(y[held] == c)
    return np.concatenate(sims), np.concatenate(quals), np.concatenate(own)


def threshold(score_own: np.ndarray, score_other: np.ndarray, keep: float = 0.98, admit: float = 0.01) -> float:
    """The default's targets: the higher of the threshold keeping ``keep`` of own faces and admitting ``admit`` of
    the others."""
    return max(float(np.quantile(score_own, 1 - keep)), float(np.quantile(score_other, 1 - admit)))


def answers(head, bags, rows, idx) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's answer face: its similarity and quality."""
    out = head.analyse([bags[i] for i in idx], start=[int(np.argmax(face_areas(rows[i]))) for i in idx])
    sims = np.array([a.similarity[a.answer] for a in out])
    quals = np.stack([quality(rows[i])[a.answer] for i, a in zip(idx, out, strict=True)])
    return sims, quals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=None, help="training photos per class (few-shot)")
    args = ap.parse_args()
    table = transferlab.Classifier().read(REPO / "data" / "presidents").table
    bb = create_backbone(args.backbone)
    res = featurize_faces(
        table["path"].tolist(),
        bb,
        content_hashes=table["content_hash"].tolist(),
        cache=open_cache(bb, "faces", None, True),
    )
    rows = list(res.bags)
    bags = [face_embeddings(r) if r is not None and len(r) else None for r in rows]
    y = table["label"].astype(str).to_numpy()
    has = np.array([b is not None for b in bags])
    opts = validate_options(backbone=args.backbone)

    def fit(idx):
        head = kind_of(args.backbone).make_head(opts)
        return head.fit([bags[i] for i in idx], y[idx], start=[int(np.argmax(face_areas(rows[i]))) for i in idx])

    out = {k: [] for k in ("known_default", "strange_default", "known_quality", "strange_quality")}
    hind = {"similarity": [], "quality-aware score": []}
    for seed in range(args.seeds):
        split = split_table(table, test_size=0.25, seed=seed, per_class=args.per_class)
        train = np.array([i for i in split.train if has[i]])
        test = np.array([i for i in split.test if has[i]])
        head = fit(train)
        s, q, own = calibration(head, [bags[i] for i in train], [rows[i] for i in train], y[train])
        feats = np.column_stack([s, q])
        model = LogisticRegression(C=1.0, max_iter=1000).fit(feats, own)
        score = model.decision_function(feats)
        t_q = threshold(score[own], score[~own])
        ks, kq = answers(head, bags, rows, test)
        known_score = model.decision_function(np.column_stack([ks, kq]))
        strange_sim, strange_score = [], []
        for c in np.unique(y):
            h = fit(train[y[train] != c])
            sc, qc = answers(h, bags, rows, test[y[test] == c])
            strange_sim.append((sc, h.threshold_))
            # the stranger's score under a rule calibrated without his class, as the default's threshold is
            sc2, q2, own2 = calibration(
                h,
                [bags[i] for i in train[y[train] != c]],
                [rows[i] for i in train[y[train] != c]],
                y[train[y[train] != c]],
            )
            m2 = LogisticRegression(C=1.0, max_iter=1000).fit(np.column_stack([sc2, q2]), own2)
            s2 = m2.decision_function(np.column_stack([sc2, q2]))
            strange_score.append((m2.decision_function(np.column_stack([sc, qc])), threshold(s2[own2], s2[~own2])))
        out["known_default"].append(float(np.mean(ks < head.threshold_)))
        out["known_quality"].append(float(np.mean(known_score < t_q)))
        out["strange_default"].append(float(np.mean(np.concatenate([v < t for v, t in strange_sim]))))
        out["strange_quality"].append(float(np.mean(np.concatenate([v < t for v, t in strange_score]))))
        # hindsight: the threshold at which 97 % of strangers are rejected, read off the strangers themselves
        for name, known_vals, strange_vals in (
            ("similarity", ks, np.concatenate([v for v, _ in strange_sim])),
            ("quality-aware score", known_score, np.concatenate([v for v, _ in strange_score])),
        ):
            cut = np.quantile(strange_vals, 0.97)
            hind[name].append(float(np.mean(known_vals < cut)))
        print(
            f"seed {seed}: known → unknown {out['known_default'][-1]:.2%} default, {out['known_quality'][-1]:.2%} "
            f"quality-aware; strangers → unknown {out['strange_default'][-1]:.1%} / {out['strange_quality'][-1]:.1%}; "
            f"weights (sim, log size, score) {np.round(model.coef_[0], 2).tolist()}",
            flush=True,
        )
    n = args.seeds
    print(f"\n{args.backbone}, {n} seeds" + (f", {args.per_class} per class" if args.per_class else "") + ":\n")
    print("| rule (calibrated on training photos only) | known → unknown | strangers → unknown |")
    print("|---|---:|---:|")
    for label, k in (("similarity (default)", "default"), ("similarity + face quality", "quality")):
        kn, st = np.array(out[f"known_{k}"]), np.array(out[f"strange_{k}"])
        print(f"| {label} | {kn.mean():.2%} ± {kn.std(ddof=1) / np.sqrt(n) * 2.776:.2%} | "
              f"{st.mean():.1%} ± {st.std(ddof=1) / np.sqrt(n) * 2.776:.1%} |")  # fmt: skip
    print("\n| hindsight, 97 % of strangers rejected | known → unknown |\n|---|---:|")
    for name, vals in hind.items():
        print(f"| {name} | {np.mean(vals):.2%} |")


if __name__ == "__main__":
    main()
