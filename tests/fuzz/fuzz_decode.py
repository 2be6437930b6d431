"""atheris harness for the decode path, for long runs by hand (not part of the test suite or CI).

    pip install atheris==2.3.0
    python tests/fuzz/fuzz_decode.py -make_seeds fuzz-seeds        # once: small valid files of every format
    python tests/fuzz/fuzz_decode.py fuzz-seeds -runs=100000        # or -max_total_time=600

Every input goes through ``load_rgb`` and ``decode_pixels`` (the torchvision JPEG path included). Anything but a
result or ``ImageRejected`` with a known reason is a crash that libFuzzer reports and saves as ``crash-*``.
Python code of transferlab is coverage-instrumented; Pillow's and libjpeg's C code is not (they are built without
libFuzzer), so coverage guidance comes from our branches and the mutations do the rest.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["transferlab"]):
    from transferlab.features import decode_pixels
    from transferlab.intake import SKIP_REASONS, ImageRejected, load_rgb


def make_seeds(folder: Path) -> None:
    """Write one small valid file per supported format into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    img = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        (folder / f"seed.{fmt.lower()}").write_bytes(buf.getvalue())


def test_one_input(data: bytes) -> None:
    for decode in (load_rgb, lambda d: decode_pixels(d, (224, 224))):
        try:
            decode(data)
        except ImageRejected as exc:
            if exc.reason not in SKIP_REASONS:
                raise AssertionError(f"unknown reason {exc.reason!r}") from None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "-make_seeds":
        make_seeds(Path(sys.argv[2]))
        sys.exit(0)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
