"""Fuzzing the decode/intake path: arbitrary and mutated bytes never crash, they give a named reason.

Hypothesis generates arbitrary bytes and mutations of small valid JPEG, PNG, GIF, WebP, BMP and TIFF files (bit
flips, truncations, inserted/deleted bytes, one format's header spliced onto another's body). The only exception
allowed out of :func:`load_rgb` and :func:`decode_pixels` is ``ImageRejected`` with a reason from
``SKIP_REASONS``; intake over a folder of such files completes and accounts for every file. The examples are
derandomised (the same cases on every run, so CI is reproducible) and bounded; the number run is printed.
``tests/fuzz/`` has an atheris harness for long runs by hand.
"""

from __future__ import annotations

import io
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from transferlab.decode import ImageRejected, decode_pixels, load_rgb
from transferlab.intake import SKIP_REASONS, intake

N = 200  # examples per property
CASES: Counter[str] = Counter()
FUZZ = settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _seed_files() -> dict[str, bytes]:
    img = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    out = {}
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[fmt] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    out["JPEG+EXIF"] = buf.getvalue()
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    """A valid small image file with a few random mutations."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "overwrite"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        else:  # another format's header on this body
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            cut = draw(st.integers(1, min(64, len(other))))
            data = bytearray(other[:cut]) + data[cut:]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=2048), mutated())


def _decodes_or_names_a_reason(fn, data: bytes) -> str:
    try:
        fn(data)
    except ImageRejected as exc:
        assert exc.reason in SKIP_REASONS, exc.reason
        return exc.reason
    return "used"


@FUZZ
@given(ANY_BYTES)
def test_load_rgb_never_crashes_on_arbitrary_or_mutated_bytes(data):
    CASES["load_rgb"] += 1
    outcome = _decodes_or_names_a_reason(load_rgb, data)
    if outcome == "used":
        img = load_rgb(data)
        assert img.mode == "RGB" and min(img.size) >= 32


@FUZZ
@given(ANY_BYTES)
def test_decode_pixels_never_crashes_and_agrees_with_load_rgb_on_what_is_usable(data):
    CASES["decode_pixels"] += 1
    outcome = _decodes_or_names_a_reason(lambda d: decode_pixels(d, (224, 224)), data)
    # the fast JPEG path (torchvision) and Pillow accept and refuse the same files
    assert (outcome == "used") == (_decodes_or_names_a_reason(load_rgb, data) == "used")
    if outcome == "used":
        t = decode_pixels(data, (224, 224))
        assert t.ndim == 3 and t.shape[0] == 3 and str(t.dtype) == "torch.uint8"


@settings(FUZZ, max_examples=N // 5)
@given(st.lists(ANY_BYTES, min_size=1, max_size=6))
def test_intake_over_a_folder_of_fuzzed_files_accounts_for_every_file(tmp_path_factory, files):
    CASES["intake (folders)"] += 1
    CASES["intake (files)"] += len(files)
    root = tmp_path_factory.mktemp("fuzz")
    for i, data in enumerate(files):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        (root / f"c{i % 2}" / f"f{i}.jpg").write_bytes(data)
    got = intake(root)
    assert sum(got.report.found.values()) == len(files)
    assert got.report.reconciles()
    assert all(s.reason in SKIP_REASONS for s in got.report.skipped)


def test_every_property_ran_all_its_examples():
    """Hypothesis ran each property on its full budget (a filter or a health check can quietly cut it short).
    Runs after the properties above, in file order."""
    if not CASES:
        pytest.skip("the fuzz properties were not selected in this run")
    total = sum(v for k, v in CASES.items() if k != "intake (folders)")
    sys.stderr.write(f"\nfuzz cases run: {dict(CASES)} (total {total})\n")
    assert CASES["load_rgb"] == N and CASES["decode_pixels"] == N
    assert CASES["intake (folders)"] == N // 5
