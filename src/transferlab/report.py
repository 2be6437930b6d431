"""Report: ``report.md`` with the data report and metrics, plus PNG plots (confusion, per class, worst mistakes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import atomic_savefig, atomic_write_text
from .decode import ImageRejected, read_rgb
from .evaluate import Metrics
from .intake import IntakeReport


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def plot_confusion(
    rows: list[str], confusion: list[list[int]], title: str, path: Path, columns: list[str] | None = None
) -> None:
    """Confusion matrix heat map with counts: rows the true class, columns the answer (``columns``: the classes
    and, for answers as given, ``unknown`` and ``no face found``; default: the classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or rows
    cm = np.asarray(confusion, dtype=int).reshape(len(rows), len(columns))
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(columns), 1.2 + 0.8 * len(rows)))
    ax.imshow(cm, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("answered" if len(columns) > len(rows) else "most probable class")
    ax.set_ylabel("true")
    if len(columns) > len(rows):  # the answers that are no class, apart from the classes
        ax.axvline(len(rows) - 0.5, color="grey", linewidth=1)
    for i in range(len(rows)):
        for j in range(len(columns)):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    ax.set_title(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def plot_per_class(metrics: Metrics, path: Path) -> None:
    """Precision, recall and F1 bars per class (of the most probable class), the legend beside the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = metrics.labels
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(labels), 3.2))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [getattr(metrics.per_class[c], key) for c in labels], 0.27, label=key)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: never on a bar
    ax.set_title("per class, most probable class (closed set)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def answered_mistakes(detail: dict[str, Any], threshold: float | None, k: int = 12) -> pd.DataFrame:
    """The ``k`` worst mistakes as answered: another class (most confident first), then ``unknown`` (least similar
    first), then no face found; each with a caption saying what was answered and why, and the answer face's box."""
    rows = detail["rows"].reset_index(drop=True)
    if len(rows) == 0:
        return rows.assign(caption=[], box=[])
    answers = np.asarray(detail["answers"], dtype=object)
    proba, sims = np.asarray(detail["proba"], dtype=float), np.asarray(detail["similarity"], dtype=float)
    wrong = np.flatnonzero(answers != rows["label"].astype(str).to_numpy())
    found = []
    for i in wrong:
        answer, label = str(answers[i]), str(rows.at[i, "label"])
        sim = "" if np.isnan(sims[i]) else f"sim {sims[i]:.2f}"
        if answer == "no face found":
            order, key, why = 2, 0.0, "no face found"
        elif answer == "unknown":
            nearest = detail["labels"][int(np.nanargmax(proba[i]))]
            cut = f" < {threshold:.2f}" if threshold is not None else ""
            order, key, why = 1, sims[i], f"unknown, nearest {nearest} ({sim}{cut})"
        else:
            p = float(np.nanmax(proba[i]))
            order, key, why = 0, -p, f"answered {answer} (p {p:.2f}" + (f", {sim})" if sim else ")")
        found.append((order, key, int(i), f"true {label}\n{why}"))
    found.sort(key=lambda t: (t[0], t[1]))
    picked = [i for _, _, i, _ in found[:k]]
    captions = [c for *_, c in found[:k]]
    return rows.iloc[picked].assign(caption=captions, box=[detail["box"][i] for i in picked]).reset_index(drop=True)


def plot_mistakes(mistakes: pd.DataFrame, path: Path, draft: tuple[int, int] | None = None) -> bool:
    """Gallery of photos, each titled with its ``caption`` (or its true and predicted labels), the face that
    answered outlined where a row has a ``box`` (pixels of the photo decoded with ``draft``, as the face pipeline
    decodes it); returns False when there are none."""
    if len(mistakes) == 0:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(mistakes))
    nrows = int(np.ceil(len(mistakes) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, r) in zip(axes.ravel(), mistakes.iterrows(), strict=False):
        try:
            img = read_rgb(r["path"], draft=draft)
            width = img.width
            img.thumbnail((256, 256))
            ax.imshow(img)
            box = r["box"] if "box" in r else None
            if isinstance(box, list | tuple) and len(box) == 4:
                x, y, w, h = (float(v) * img.width / width for v in box)
                ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="yellow", linewidth=1.5))
        except ImageRejected:
            ax.text(0.5, 0.5, "unavailable", ha="center")
        title = r["caption"] if "caption" in r else f"true {r['label']}\npred {r['pred']} ({r['confidence']:.2f})"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return True


def intake_table_md(report: IntakeReport) -> str:
    """Markdown table: per class found, used and skipped by reason."""
    by = report.skipped_by_class()
    reasons = sorted({r for c in by.values() for r in c})
    header = ["class", "found", "used", *(f"skipped: {r}" for r in reasons)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for c in sorted(report.found):
        cells = [c, str(report.found[c]), str(report.used.get(c, 0)), *(str(by.get(c, {}).get(r, 0)) for r in reasons)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_md(metrics: Metrics, group_by: str | None) -> str:
    """Markdown for overall, per-class and per-group results."""
    lo, hi = metrics.accuracy_ci95 or [float("nan")] * 2
    out = [
        f"**Accuracy as answered {_fmt(metrics.accuracy)}** (95% CI {_fmt(lo)}–{_fmt(hi)}, n = {metrics.n}: every "
        "held-out photo that could be read; `unknown` and `no face found` count as wrong for a known person); most "
        f"probable class {_fmt(metrics.accuracy_closed_set)}; log loss {_fmt(metrics.log_loss)}.",
        "",
        "Per class, by the most probable class (closed set, over the photos with a face):",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in metrics.labels:
        m = metrics.per_class.get(c)
        if m:
            out.append(f"| {c} | {_fmt(m.precision)} | {_fmt(m.recall)} | {_fmt(m.f1)} | {m.support} |")
    if group_by and metrics.groups:
        out += [
            "",
            f"Accuracy per `{group_by}`:",
            "",
            f"| {group_by} | accuracy | n | per class |",
            "|---|---:|---:|---|",
        ]
        for v, g in metrics.groups.items():
            pc = ", ".join(f"{c} {_fmt(x['accuracy'])} ({x['n']})" for c, x in g.per_class.items())
            out.append(f"| {v} | {_fmt(g.accuracy)} | {g.n} | {pc} |")
    return "\n".join(out)


def write_report(
    out: Path,
    *,
    metrics: Metrics,
    intake_report: IntakeReport,
    config: dict[str, Any],
    split_info: dict[str, Any],
    timings: dict[str, float],
    feature_stats: dict[str, int],
    detail: dict[str, Any],
    group_by: str | None,
    draft: tuple[int, int] | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``out``; returns the report's path. ``detail`` is the evaluation's
    per-photo detail (:func:`~transferlab.evaluate.evaluate_analyses`); ``draft``, the size photos are decoded at
    for the model (so the answer faces' boxes land on them)."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"accuracy as answered {metrics.accuracy:.3f} (n={metrics.n})"
    plot_confusion(
        metrics.labels, metrics.confusion_answered or metrics.confusion, title, out / "confusion.png",
        columns=metrics.answer_labels,
    )  # fmt: skip
    plot_per_class(metrics, out / "per_class.png")
    threshold = config.get("faces", {}).get("unknown_threshold")
    mistakes = answered_mistakes({**detail, "labels": metrics.labels}, threshold)
    has_gallery = plot_mistakes(mistakes, out / "mistakes.png", draft=draft)
    skipped = intake_report.skipped
    lines = [
        "# transferlab training report",
        "",
        f"Backbone **{config['backbone']}**, head **{config['head']}** (pool {config['pool']}); "
        f"data `{config['data']}`.",
        "",
        "## Data",
        "",
        intake_table_md(intake_report),
        "",
        f"Near-duplicate groups kept together across the split: {intake_report.near_duplicate_groups}. "
        f"Label conflicts: {len(intake_report.conflicts)}.",
    ]
    if skipped:
        lines += ["", "Skipped files:", "", "| file | class | reason | detail |", "|---|---|---|---|"]
        lines += [f"| `{s.path}` | {s.label} | {s.reason} | {s.detail[:80]} |" for s in skipped[:200]]
        if len(skipped) > 200:
            lines.append(f"| … {len(skipped) - 200} more in intake.json | | | |")
    for c in intake_report.conflicts:
        members = "; ".join(f"`{p}` ({lab})" for p, lab in c["members"])
        lines.append(f"- label conflict ({c['kind']}): {members}")
    if "faces" in config:
        f = config["faces"]
        lines += [
            "",
            "## Faces",
            "",
            "Every photo went through face detection (YuNet), alignment and a face embedding. Photos without a face "
            "are skipped with reason `no face`. In a photo with several faces, training used the face that agrees "
            "best with the rest of its class (multiple-instance learning) and prediction answers with the face that "
            "most confidently matches a known class.",
            "",
            f"- training photos with a face: {f['images_with_faces']}, with several faces: "
            f"{f['images_with_several_faces']} (labelled person not the largest face in "
            f"{f['several_faces_not_largest_chosen']})",
            f"- held-out photos with several faces: {metrics.several_faces or 0}",
            f"- unknown threshold (cosine similarity to the nearest prototype of the face's most probable class, "
            f"calibrated by cross-validation on the training faces): {f['unknown_threshold']:.3f}; held-out photos "
            f"of known people answered `unknown`: {_rate(metrics.unknown_rate)}; accuracy as "
            f"answered {metrics.accuracy:.3f}, of the most probable class {metrics.accuracy_closed_set:.3f}",
        ]
    lines += [
        "",
        "## Split",
        "",
        f"Stratified by class, duplicate groups never split, seed {split_info['seed']}, test size "
        f"{split_info['test_size']}"
        + (f", {split_info['per_class']} training images per class" if split_info.get("per_class") else "")
        + f": {split_info['n_train']} train / {split_info['n_test']} test (`split.csv`).",
        "",
        "## Held-out results",
        "",
        metrics_md(metrics, group_by),
        "",
        "![confusion](confusion.png) ![per class](per_class.png)",
        "",
        "## Worst mistakes",
        "",
        "![mistakes](mistakes.png)" if has_gallery else "No mistakes on the held-out images.",
        "",
        "## Time",
        "",
        f"Features: {feature_stats.get('computed', 0)} computed, {feature_stats.get('cached', 0)} from cache. "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + ".",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _rate(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def summary_text(metrics: Metrics, group_by: str | None) -> str:
    """The few lines ``train`` and ``evaluate`` print: accuracy with its interval, per group, per class, files."""
    lo, hi = metrics.accuracy_ci95 or [float("nan"), float("nan")]
    lines = [
        f"accuracy as answered {metrics.accuracy:.3f}  (95% CI {lo:.3f}–{hi:.3f}, n={metrics.n}, log loss "
        f"{metrics.log_loss:.3f})"
    ]
    if metrics.unknown_rate or metrics.no_face_rate:
        lines.append(
            f"  answered unknown {_rate(metrics.unknown_rate)} of known people, no face {_rate(metrics.no_face_rate)}; "
            f"most probable class: accuracy {metrics.accuracy_closed_set:.3f}"
        )
    if group_by and metrics.groups:
        for v, g in metrics.groups.items():
            pc = ", ".join(f"{c} {x['accuracy']:.2f}" for c, x in g.per_class.items())
            lines.append(f"  {group_by}={v:<20} accuracy {g.accuracy:.3f}  n={g.n:<4} ({pc})")
    pcs = "  ".join(f"{c} {m.recall:.2f}" for c, m in metrics.per_class.items())
    lines.append(f"  recall per class (most probable class): {pcs}")
    if metrics.skipped:
        lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(metrics.skipped.items())))
    if metrics.found is not None:
        n_skipped = sum(metrics.skipped.values())
        lines.append(f"  files: {metrics.found} found = {metrics.used} used + {n_skipped} skipped")
    return "\n".join(lines)
