"""The photos that ``benchmarks/presidents_audit.csv`` was made from: every bundled photo that the default face model
(sface + logreg, default open set) answers wrongly out of fold, in any of the repeats.

    python benchmarks/audit_candidates.py [--repeats 2] [--folds 5]

Each repeat is a shuffled ``StratifiedGroupKFold`` over the intake table (duplicate groups never straddle folds);
each photo is answered by a model fitted on the other folds, as ``predict`` answers (``unknown`` below the
calibrated threshold). Printed per candidate: the answers per repeat (answer, most probable class, similarity,
faces in the photo) and the audit's verdict, so that a new miss that nobody has looked at yet stands out as
``(not audited)``. The audit itself is a person looking at each photo: this script only says which ones to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.backbones.faces import face_areas  # noqa: E402
from transferlab.features import featurize_faces, open_cache  # noqa: E402
from transferlab.options import validate_options  # noqa: E402
from transferlab.pipeline import _face_head  # noqa: E402

DATA = REPO / "data" / "presidents"
AUDIT = REPO / "benchmarks" / "presidents_audit.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    table = transferlab.Classifier().read(DATA).table
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
    files = [str(Path(p).relative_to(DATA)) for p in table["path"]]
    answers: dict[int, list[str]] = {}
    for repeat in range(args.repeats):
        folds = StratifiedGroupKFold(args.folds, shuffle=True, random_state=repeat)
        for train, test in folds.split(np.zeros(len(y)), y, table["group"].to_numpy()):
            train = np.array([i for i in train if bags[i] is not None])
            head = _face_head(validate_options(backbone="sface")).fit(
                [bags[i] for i in train], y[train], start=[largest[i] for i in train]
            )
            for i in test:
                if bags[i] is None:
                    answers.setdefault(i, []).append("no face found")
                    continue
                a = head.analyse([bags[i]], start=[largest[i]])[0]
                closed = str(head.classes_[a.proba[a.answer].argmax()])
                s = float(a.similarity[a.answer])
                said = closed if s >= head.threshold_ else "unknown"
                n = f"{len(bags[i])} face" + ("s" if len(bags[i]) != 1 else "")
                answers.setdefault(i, []).append(f"{said} ({closed}, {s:.3f}, {n})")
    verdicts = pd.read_csv(AUDIT).set_index("file")["verdict"].to_dict() if AUDIT.exists() else {}
    wrong = sorted(i for i, got in answers.items() if any(not g.startswith(y[i] + " ") for g in got))
    print(f"{len(wrong)} of {len(y)} photos answered wrongly out of fold in some repeat:\n")
    print("| file | answers per repeat | audit |\n|---|---|---|")
    for i in wrong:
        print(f"| {files[i]} | {'; '.join(answers[i])} | {verdicts.get(files[i], '(not audited)')} |")


if __name__ == "__main__":
    main()
