"""Intake: every file found is used or skipped with its reason, and the counts reconcile."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.decode import ImageRejected, load_rgb
from transferlab.errors import TransferlabError
from transferlab.intake import attach_manifest, intake

from .conftest import PRESIDENTS
from .corpus import build_corpus

GOOD = PRESIDENTS / "obama" / sorted(p.name for p in (PRESIDENTS / "obama").iterdir())[0]
OTHER = PRESIDENTS / "trump" / sorted(p.name for p in (PRESIDENTS / "trump").iterdir())[0]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    build_corpus(root, GOOD, OTHER)
    return root


def test_sixteen_bit_png_keeps_its_contrast():
    ramp = (np.arange(256 * 64, dtype=np.uint16).reshape(64, 256) * 4).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    arr = np.asarray(load_rgb(buf.getvalue()))
    assert arr.min() < 5 and arr.max() > 250


def test_intake_cache_gives_identical_results(tmp_path, corpus):
    root = corpus
    first = intake(root, cache_dir=tmp_path / "c")
    second = intake(root, cache_dir=tmp_path / "c")
    assert first.table.equals(second.table)
    assert [s.reason for s in first.report.skipped] == [s.reason for s in second.report.skipped]


def test_near_duplicates_are_grouped_and_label_conflicts_reported(tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    img = Image.open(GOOD).convert("RGB")
    img.save(root / "a" / "original.jpg", quality=95)
    img.resize((img.width // 2, img.height // 2)).save(root / "b" / "resized_copy.jpg", quality=70)
    for i, p in enumerate(sorted((PRESIDENTS / "trump").iterdir())[:3]):
        shutil.copy(p, root / "a" / f"t{i}.jpg")
    got = intake(root)
    t = got.table.set_index(got.table["path"].map(lambda p: Path(p).name))
    assert t.loc["original.jpg", "group"] == t.loc["resized_copy.jpg", "group"]
    assert t.loc["t0.jpg", "group"] != t.loc["original.jpg", "group"]
    assert got.report.near_duplicate_groups == 1
    assert len(got.report.conflicts) == 1
    assert {lab for _, lab in got.report.conflicts[0]["members"]} == {"a", "b"}


def test_csv_input_keeps_extra_columns(tmp_path):
    rows = ["path,label,kind"]
    for label in ("obama", "trump"):
        for p in sorted((PRESIDENTS / label).iterdir())[:3]:
            rows.append(f"{p},{label},web")
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    got = intake(csv)
    assert len(got.table) == 6
    assert set(got.table["kind"]) == {"web"}


def test_manifest_columns_are_attached_by_path(small_photos):
    got = intake(small_photos)
    t = attach_manifest(got.table, small_photos / "manifest.csv", got.root)
    assert set(t["kind"]) <= {"web-photo", "aligned-face-crop"}
    assert (t["kind"] != "").all()


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(TransferlabError, match="no such file or folder"):
        intake(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(GOOD.read_bytes())
    with pytest.raises(TransferlabError, match="no class subfolders"):
        intake(tmp_path / "flat")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("filename,klass\nx.jpg,a\n")
    with pytest.raises(TransferlabError, match="needs a 'path'"):
        intake(bad_csv)


def test_load_rgb_rejects_with_reason():
    with pytest.raises(ImageRejected) as e:
        load_rgb(b"")
    assert e.value.reason == "zero-byte"
    with pytest.raises(ImageRejected) as e:
        load_rgb(b"GIF89a" + b"\x00" * 10)
    assert e.value.reason in {"truncated", "unreadable", "not an image"}
