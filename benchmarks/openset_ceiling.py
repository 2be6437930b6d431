"""How far can any threshold take the open set with SFace? The trade-off between known people answered `unknown`
and strangers admitted, at thresholds chosen with hindsight (on the strangers themselves), for the similarity the
default uses, for scores that add the head's confidence (issue 17's "combine similarity and probability"), for the
mean cosine to a prototype's faces (SFace's pairwise scale) and for one threshold per answered class.

    python benchmarks/openset_ceiling.py [--seeds 5] [--no-audit]

Per seed (the accuracy benchmark's 75/25 splits): the default face model is fitted; each held-out photo's answer face
gives (similarity to its class's nearest prototype, the head's probability); strangers are the held-out photos of a
class left out of training, scored by a model fitted without it, for each class in turn. For a score
``similarity + w · log(probability)`` the threshold that answers `unknown` for a given share of strangers is read
off the strangers' own scores (an oracle: no calibration can do better), and the share of known people it costs is
printed beside the default rule's (calibrated on training data only). The last rows repeat the similarity's frontier
without the photos that ``benchmarks/presidents_audit.csv`` finds do not show the labelled president (see
``benchmarks/accuracy.py``), on both sides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.backbones.faces import face_areas  # noqa: E402
from transferlab.features import featurize_faces, open_cache  # noqa: E402
from transferlab.kinds import kind_of  # noqa: E402
from transferlab.options import validate_options  # noqa: E402
from transferlab.split import split_table  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from accuracy import AUDIT, audited_out  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-audit", action="store_true", help="skip the rows without the audited photos")
    args = ap.parse_args()
    table = transferlab.Classifier().read(REPO / "data" / "presidents").table
    bb = create_backbone("sface")
    res = featurize_faces(
        table["path"].tolist(),
        bb,
        content_hashes=table["content_hash"].tolist(),
        cache=open_cache(bb, "faces", None, True),
    )
    bags = [b[:, :128] if b is not None and len(b) else None for b in res.bags]
    largest = [int(np.argmax(face_areas(b))) if b is not None and len(b) else 0 for b in res.bags]
    y = table["label"].astype(str).to_numpy()
    has = np.array([b is not None for b in bags])

    def fit(idx: np.ndarray):
        return (
            kind_of("sface")
            .make_head(validate_options(backbone="sface"))
            .fit([bags[i] for i in idx], y[idx], start=[largest[i] for i in idx])
        )

    def scores(head, idx: np.ndarray, fitted_on: np.ndarray) -> tuple[np.ndarray, ...]:
        out = head.analyse([bags[i] for i in idx], start=[largest[i] for i in idx])
        # The prototypes before normalisation (k-means means of unit vectors, refitted as the head fits them): a
        # face's dot product with one is its mean cosine to the faces it averages, SFace's own pairwise scale.
        X = np.stack([bags[i][c] for i, c in zip(fitted_on, head.chosen_, strict=True)])
        means = {
            c: KMeans(k, n_init=4, random_state=0).fit(X[y[fitted_on] == c]).cluster_centers_
            if (k := max(1, min(4, int((y[fitted_on] == c).sum()) // 5))) > 1
            else X[y[fitted_on] == c].mean(axis=0, keepdims=True)
            for c in head.classes_
        }
        answered = [head.classes_[a.proba[a.answer].argmax()] for a in out]
        return (
            np.array([a.similarity[a.answer] for a in out]),
            np.array([a.proba[a.answer].max() for a in out]),
            np.array(answered),
            np.array([(means[c] @ bags[i][a.answer]).max() for i, a, c in zip(idx, out, answered, strict=True)]),
        )

    known, strangers, default_known, default_strangers = [], [], [], []
    dropped = set() if args.no_audit else audited_out(REPO / "data" / "presidents", AUDIT)
    is_kept = np.array([str(p) not in dropped for p in table["path"]])
    kept_known, kept_strangers = [], []
    for seed in range(args.seeds):
        split = split_table(table, test_size=0.25, seed=seed)
        train = np.array([i for i in split.train if has[i]])
        test = np.array([i for i in split.test if has[i]])
        head = fit(train)
        s, p, a, m = scores(head, test, train)
        known.append((s, p, a, m))
        default_known.append(s < head.threshold_)
        kept_known.append(is_kept[test])
        for c in np.unique(y):
            h = fit(train[y[train] != c])
            s2, p2, a2, m2 = scores(h, test[y[test] == c], train[y[train] != c])
            strangers.append((s2, p2, a2, m2))
            default_strangers.append(s2 < h.threshold_)
            kept_strangers.append(is_kept[test[y[test] == c]])
    ks, kp, ka, km = (np.concatenate([k[i] for k in known]) for i in range(4))
    ss, sp, sa, sm = (np.concatenate([s[i] for s in strangers]) for i in range(4))
    print(
        f"default rule (calibrated on training data): known → unknown {np.concatenate(default_known).mean():.2%}, "
        f"strangers → unknown {np.concatenate(default_strangers).mean():.2%} ({len(ks)} known, {len(ss)} strangers)"
    )
    print("\n| score | strangers → unknown | known → unknown at that oracle threshold |\n|---|---:|---:|")
    for w in (0.0, 0.1, 0.3):
        for target in (0.963, 0.97):
            t = np.quantile(ss + w * np.log(sp), target)
            name = "similarity (the default's)" if w == 0 else f"similarity + {w} · log p"
            print(f"| {name} | {target:.1%} | {np.mean(ks + w * np.log(kp) < t):.2%} |")
    for target in (0.963, 0.97):
        t = np.quantile(sm, target)
        print(f"| mean cosine to a prototype's faces (SFace's pairwise scale) | {target:.1%} | {np.mean(km < t):.2%} |")
    for target in (0.963, 0.97):
        cost = per_class_oracle(ks, ka, ss, sa, target)
        print(f"| similarity, one threshold per answered class (oracle) | {target:.1%} | {cost:.2%} |")
    if dropped:
        kk, sk = np.concatenate(kept_known), np.concatenate(kept_strangers)
        dk, ds = np.concatenate(default_known), np.concatenate(default_strangers)
        name = f"similarity, without the {len(dropped)} audited photos"
        for target in (0.963, 0.97):
            print(f"| {name} | {target:.1%} | {np.mean(ks[kk] < np.quantile(ss[sk], target)):.2%} |")
        print(
            f"\ndefault rule without them: known → unknown {dk[kk].mean():.2%}, strangers → unknown {ds[sk].mean():.2%}"
        )


def per_class_oracle(ks: np.ndarray, ka: np.ndarray, ss: np.ndarray, sa: np.ndarray, target: float) -> float:
    """The least share of known people answered `unknown` by any thresholds, one per answered class, that answer
    `unknown` for at least ``target`` of the strangers (read off the strangers themselves): for each price λ of a
    stranger, each class's threshold minimises (known lost − λ · strangers caught), the price swept up."""
    best = 1.0
    for lam in np.geomspace(0.01, 100, 400):
        lost = caught = 0
        for c in np.unique(np.concatenate([ka, sa])):
            k, st = np.sort(ks[ka == c]), np.sort(ss[sa == c])
            cuts = np.concatenate([[-np.inf], np.unique(np.concatenate([k, st])) + 1e-9])
            kl, sc = np.searchsorted(k, cuts), np.searchsorted(st, cuts)  # below each cut
            j = int(np.argmin(kl - lam * sc))
            lost, caught = lost + kl[j], caught + sc[j]
        if caught >= target * len(ss):
            best = min(best, lost / len(ks))
    return best


if __name__ == "__main__":
    main()
