"""The photos that ``benchmarks/presidents_audit.csv`` was made from: every bundled photo that the default face model
(sface + logreg, default open set) answers wrongly out of fold, in any of the repeats.

    python benchmarks/audit_candidates.py [--repeats 2] [--folds 5]

Each repeat is ``transferlab check-labels data/presidents --seed R`` (a shuffled, stratified, group-aware k-fold;
each photo answered by a model fitted on the other folds, as ``predict`` answers). Printed per candidate: the
answers per repeat (answer, most probable class, similarity, faces in the photo) and the audit's verdict, so that a
new miss nobody has looked at yet stands out as ``(not audited)``. The audit itself is a person looking at each
photo: this script only says which ones to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from transferlab.label_check import check_labels  # noqa: E402

DATA = REPO / "data" / "presidents"
AUDIT = REPO / "benchmarks" / "presidents_audit.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    answers: dict[str, list[str]] = {}
    wrong: set[str] = set()
    for repeat in range(args.repeats):
        rows = check_labels(DATA, folds=args.folds, seed=repeat, verbose=False).rows
        for r in rows.itertuples():
            f = str(Path(r.path).relative_to(DATA))
            n = f"{r.n_faces} face" + ("s" if r.n_faces != 1 else "")
            answers.setdefault(f, []).append(f"{r.answer} ({r.most_probable}, {r.similarity:.3f}, {n})")
            if r.verdict != "agrees":
                wrong.add(f)
    verdicts = pd.read_csv(AUDIT).set_index("file")["verdict"].to_dict() if AUDIT.exists() else {}
    print(f"{len(wrong)} of {len(answers)} photos answered wrongly out of fold in some repeat:\n")
    print("| file | answers per repeat | audit |\n|---|---|---|")
    for f in sorted(wrong):
        print(f"| {f} | {'; '.join(answers[f])} | {verdicts.get(f, '(not audited)')} |")


if __name__ == "__main__":
    main()
