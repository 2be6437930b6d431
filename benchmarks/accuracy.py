"""Held-out accuracy of whole-image ImageNet features against face embeddings, over several seeds.

    python benchmarks/accuracy.py [--seeds 5] [--test-size 0.25]

Each seed draws its own stratified, group-aware 75/25 split of the bundled presidents photos; every pipeline sees
the same splits. Prints a Markdown table: mean ± 95% t-interval over seeds, overall, per `kind`, and the worst
class among web photos. Features are cached, so a rerun takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402

PIPELINES = [
    ("mobilenet_v2 (whole image) → logreg", {"backbone": "mobilenet_v2"}),
    ("efficientnet_lite0 (whole image) → logreg", {"backbone": "efficientnet_lite0"}),
    ("largest face → SFace → logreg (baseline)", {"backbone": "sface", "face_choice": "largest"}),
    ("dlib_resnet (faces, MIL) → logreg", {"backbone": "dlib_resnet"}),
    ("sface (faces, MIL) → logreg — default", {"backbone": "sface"}),
    ("sface (faces, MIL) → svm", {"backbone": "sface", "head": "svm"}),
]


def ci(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return f"{a.mean():.3f}"
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return f"{a.mean():.3f} ± {half:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-size", type=float, default=0.25)
    args = ap.parse_args()
    data = Path(args.data)
    print(
        f"| pipeline ({args.seeds} seeds, mean ± 95% CI) | overall | aligned-face-crop | web-photo | "
        "worst web-photo class | unknown rate |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in PIPELINES:
            rows: dict[str, list[float]] = {"all": [], "crop": [], "web": [], "worst": [], "unknown": []}
            for seed in range(args.seeds):
                r = transferlab.train(
                    data,
                    Path(tmp) / "m",
                    seed=seed,
                    test_size=args.test_size,
                    manifest=data / "manifest.csv",
                    group_by="kind",
                    **kw,
                )
                m = r.metrics
                rows["all"].append(m["accuracy"])
                rows["crop"].append(m["groups"]["aligned-face-crop"]["accuracy"])
                web = m["groups"]["web-photo"]
                rows["web"].append(web["accuracy"])
                rows["worst"].append(min(v["accuracy"] for v in web["per_class"].values()))
                rows["unknown"].append(m.get("unknown_rate", float("nan")))
            unknown = ci(rows["unknown"]) if not np.isnan(rows["unknown"]).any() else "—"
            print(
                f"| {name} | {ci(rows['all'])} | {ci(rows['crop'])} | {ci(rows['web'])} | {ci(rows['worst'])} "
                f"| {unknown} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
