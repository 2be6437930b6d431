"""`transferlab serve` under a bounded load on 127.0.0.1, beside the same predictions made in-process.

    python benchmarks/serve.py [--model runs/presidents] [--requests 300] [--concurrency 8]

Starts the real server (`python -m transferlab serve MODEL`) on a free loopback port, sends a fixed number of
`POST /api/predict` requests (bundled photos, web photos and face crops shuffled) from an async httpx client with at
most `--concurrency` in flight, and prints requests/s, p50/p95 latency and the error count. For comparison, one run
measures the same photos through `Classifier.predict_images` in this process, one photo at a time, and the server
one request at a time. The model defaults to `runs/presidents` (the README's main job), trained here if missing.
The load generator shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photos(n: int) -> list[tuple[str, bytes]]:
    import pandas as pd

    manifest = pd.read_csv(REPO / "data" / "presidents" / "manifest.csv").sample(frac=1.0, random_state=0)
    files = manifest["file"].tolist()[:n]
    return [(f, (REPO / "data" / "presidents" / f).read_bytes()) for f in files]


def _ensure_model(model: Path) -> None:
    if (model / "model.json").is_file():
        return
    print(f"{model} not found: training the default model on the bundled data first (about a minute)")
    subprocess.run(
        [sys.executable, "-m", "transferlab", "train", str(REPO / "data" / "presidents"), "--out", str(model), "-q"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def in_process(model: Path, photos: list[tuple[str, bytes]]) -> tuple[float, list[float]]:
    """Photos/s and latencies of `predict_images` on the same bytes, one at a time (no HTTP)."""
    import transferlab

    clf = transferlab.load(model, use_cache=False)
    clf.predict_images([photos[0][1]])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for _, data in photos:
        t = time.perf_counter()
        clf.predict_images([data])
        lat.append(time.perf_counter() - t)
    return len(photos) / (time.perf_counter() - t0), lat


async def load(url: str, photos: list[tuple[str, bytes]], n: int, concurrency: int) -> tuple[float, list[float], int]:
    """Send `n` requests with at most `concurrency` in flight; requests/s, latencies, errors."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        name, data = photos[i % len(photos)]
        async with gate:
            t = time.perf_counter()
            try:
                r = await client.post("/api/predict", files={"file": (Path(name).name, data, "image/jpeg")})
                ok = r.status_code == 200 and "faces" in r.json()
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(n)))
        wall = time.perf_counter() - t0
    return n / wall, lat, errors


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(lat) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "runs" / "presidents")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--photos", type=int, default=100, help="distinct bundled photos the requests cycle through")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _ensure_model(args.model)
    photos = _photos(args.photos)
    kb = sum(len(d) for _, d in photos) / len(photos) / 1024
    print(f"{os.cpu_count()} cores (shared); model {args.model}; {len(photos)} bundled photos, mean {kb:.0f} KB")

    direct_rate, direct_lat = in_process(args.model, photos)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "transferlab", "serve", str(args.model), "--port", str(port), "--quiet"]
    t = time.perf_counter()
    server = subprocess.Popen(cmd, env=env)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        startup = time.perf_counter() - t
        asyncio.run(load(url, photos, 8, 1))  # warm-up
        seq_rate, seq_lat, seq_err = asyncio.run(load(url, photos, len(photos), 1))
        rate, lat, errors = asyncio.run(load(url, photos, args.requests, args.concurrency))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"server start-up (process start → /healthz answers, model loaded): {startup:.1f} s\n")
    print("| mode | requests | requests/s | p50 ms | p95 ms | errors | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| in-process `predict_images`, one photo at a time | {len(photos)} | {direct_rate:.1f} | "
        f"{_pct(direct_lat, 50):.0f} | {_pct(direct_lat, 95):.0f} | 0 | 1.00 |"
    )
    print(
        f"| server, 1 request in flight | {len(photos)} | {seq_rate:.1f} | {_pct(seq_lat, 50):.0f} | "
        f"{_pct(seq_lat, 95):.0f} | {seq_err} | {seq_rate / direct_rate:.2f} |"
    )
    print(
        f"| server, {args.concurrency} requests in flight | {args.requests} | {rate:.1f} | {_pct(lat, 50):.0f} | "
        f"{_pct(lat, 95):.0f} | {errors} | {rate / direct_rate:.2f} |"
    )


if __name__ == "__main__":
    main()
