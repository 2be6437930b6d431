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

# 3. The estimator API composes with anything that takes fit/predict.
clf = transferlab.Classifier(backbone="sface", head="svm").fit(
    photos + sorted((DATA / "trump").glob("*.jpg"))[:3], ["obama"] * 3 + ["trump"] * 3
)
print(clf.predict(sorted((DATA / "trump").glob("*.jpg"))[3:6]))
