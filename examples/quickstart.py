"""Train, evaluate, save, load and predict from Python: the same pipeline the CLI runs.

python examples/quickstart.py
"""

from pathlib import Path

import transferlab

DATA = Path(__file__).resolve().parents[1] / "data" / "presidents"

# 1. The whole job: intake → split → face features (cached) → head → held-out report → saved model.
result = transferlab.train(DATA, "runs/example", manifest=DATA / "manifest.csv", group_by="kind")
print(f"held-out accuracy {result.metrics['accuracy']:.3f}")
for kind, g in result.metrics["groups"].items():
    print(f"  {kind:<18} {g['accuracy']:.3f} (n={g['n']})")

# 2. Load the saved model (JSON + safetensors; nothing is unpickled) and predict files or PIL images.
clf = transferlab.load("runs/example")
photos = sorted((DATA / "obama").glob("*.jpg"))[:3]
for p in clf.predict_images(photos):
    print(p.path, p.label, f"{max(p.probabilities.values()):.2f}", p.box)

# 3. The estimator API: fit on six photos, three per person, and predict three others.
trump = sorted((DATA / "trump").glob("*.jpg"))
clf = transferlab.Classifier(backbone="sface", head="svm").fit(photos + trump[:3], ["obama"] * 3 + ["trump"] * 3)
threshold = clf.head_.threshold_  # calibrated on the six training faces
for p in clf.predict_images(trump[3:6]):
    face = next(f for f in p.faces if f["answer"]) if p.faces else None
    if face is None:
        print(f"{Path(p.path).name}: {p.error}")
    elif p.label == "unknown":
        print(
            f"{Path(p.path).name}: unknown: the face is {face['similarity']:.2f} similar to the closest person's "
            f"mean face, below the {threshold:.2f} calibrated from six photos (more photos, a steadier threshold)"
        )
    else:
        print(f"{Path(p.path).name}: {p.label} (similarity {face['similarity']:.2f}, threshold {threshold:.2f})")
