"""The bad-input corpus: every kind of messy input gets the outcome the guide's table promises."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from transferlab.decode import decode_pixels, load_rgb
from transferlab.intake import SKIP_REASONS, intake

from .conftest import PRESIDENTS, REPO
from .corpus import Kind, build_corpus

GOOD = PRESIDENTS / "obama" / sorted(p.name for p in (PRESIDENTS / "obama").iterdir())[0]
OTHER = PRESIDENTS / "trump" / sorted(p.name for p in (PRESIDENTS / "trump").iterdir())[0]


def _kinds_only(tmp: Path) -> list[Kind]:
    return build_corpus(tmp / "photos", GOOD, OTHER)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """Build the corpus and run intake once over it; vanishing files are deleted after the scan."""
    root = tmp_path_factory.mktemp("corpus") / "photos"
    kinds = build_corpus(root, GOOD, OTHER)

    def delete_vanishing_after_scan(iterable, total, description):
        for k in kinds:
            for f in k.files if k.vanish else []:
                os.unlink(root / f)
        return iterable

    got = intake(root, progress=delete_vanishing_after_scan)
    return root, kinds, got


with tempfile.TemporaryDirectory() as _tmp:
    KIND_NAMES = [k.kind for k in _kinds_only(Path(_tmp))]


def test_the_corpus_has_at_least_25_kinds():
    assert len(KIND_NAMES) >= 25 and len(set(KIND_NAMES)) == len(KIND_NAMES)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_kind_gets_its_documented_outcome(corpus_run, kind):
    root, kinds, got = corpus_run
    k = next(x for x in kinds if x.kind == kind)
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    used = {rel(p): p for p in got.table["path"]}
    skipped = {rel(s.path): s for s in got.report.skipped}
    if k.outcome == "used":
        for f in k.files:
            assert f in used, f"{f}: expected used, got {skipped.get(f)}"
            if k.check is not None:
                img = load_rgb(Path(used[f]).read_bytes())
                assert img.mode == "RGB" and k.check(img), f"{f}: decoded pixels are not the documented conversion"
    elif k.outcome == "ignored":
        for f in k.files:
            assert f not in used and f not in skipped
            assert not any(rel(p).startswith(f + "/") for p in [*used, *skipped])
    elif k.outcome == "class ignored, listed as empty":
        assert k.files == got.report.empty_classes and k.files[0] not in got.report.found
    elif k.outcome == "class kept apart, reported":
        assert got.report.similar_labels == [k.files]
        assert all(got.report.used[c] == 2 for c in k.files)
    else:
        assert k.outcome in SKIP_REASONS
        for f in k.files:
            assert f in skipped, f"{f}: expected skipped ({k.outcome}), got used"
            assert skipped[f].reason == k.outcome, f"{f}: expected {k.outcome}, got {skipped[f]}"
            assert skipped[f].detail or k.outcome == "duplicate" or k.outcome == "zero-byte"


def test_counts_reconcile_over_the_whole_corpus(corpus_run):
    _, kinds, got = corpus_run
    files = [f for k in kinds if k.outcome not in ("ignored",) and not k.outcome.startswith("class ") for f in k.files]
    files += [f"{c}/{c}_{i}.jpg" for c in ("Dog", "dog") for i in (1, 2)]
    assert sum(got.report.found.values()) == len(files)
    totals = got.report.totals()
    assert totals["found"] == totals["used"] + sum(totals["skipped"].values())
    assert got.report.reconciles()
    for c, d in got.report.to_dict()["classes"].items():
        assert d["found"] == d["used"] + sum(d["skipped"].values()), c


def test_exif_orientation_is_the_same_on_the_fast_jpeg_path(corpus_run):
    # features decode ordinary JPEGs with torchvision, other cases with Pillow: both must show the photo upright
    root, kinds, _ = corpus_run
    for k in kinds:
        if k.kind.startswith("EXIF orientation"):
            f = root / k.files[0]
            pil = load_rgb(f.read_bytes())
            t = decode_pixels(str(f), (224, 224))
            assert tuple(t.shape) == (3, pil.height, pil.width), k.kind
            assert k.check(Image.fromarray(t.permute(1, 2, 0).numpy())), k.kind


def _readme_table() -> dict[str, str]:
    text = (REPO / "docs" / "GUIDE.md").read_text()  # the guide holds what the README used to
    section = text.split("### What intake does with messy folders", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| (?!kind \||---)(.+?) \| (.+?) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_readme_table_matches_the_corpus(tmp_path):
    table = _readme_table()
    kinds = _kinds_only(tmp_path)
    assert table == {k.kind: k.documented for k in kinds}
