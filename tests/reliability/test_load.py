"""Issue 7, item 6: load. The evaluate and bench stages handle a 10,000-image test split in bounded memory: the split is
memory-mapped and streamed in batches, never held in RAM (as uint8 or as float32). Measured in fresh processes,
with 1,000 and then 10,000 test images: 10x the images must cost (next to) no extra memory."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeopt.io import read_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from tests.conftest import REPO, write_prepared


def _rgb_project(tmp_path: Path) -> Path:
    """32x32 RGB prepared data and a small (width 0.25) baseline, exported for both runtimes."""
    from edgeopt.models import build_model, model_config, save_checkpoint
    from stages import export

    root = tmp_path / "rgb"
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 30)
    write_prepared(root, rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8), labels, [str(i) for i in range(10)])
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    cfg = model_config("small_cnn", 10, 3, 0.25, True, 32)
    save_checkpoint(root / "models" / "baseline.pt", build_model(cfg).eval(), cfg)
    export.run(load_params(root / "params.yaml", ["export.parity_samples=64"]), Paths(root))
    return root


def _big_test_split(project: Path, n: int) -> None:
    """Replace the test split by n synthetic 32x32 RGB images, written straight to disk (memmap)."""
    test = project / "data" / "prepared" / "test"
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(test / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
    for s in range(0, n, 1000):
        images[s:s + 1000] = rng.integers(0, 256, (min(1000, n - s), 32, 32, 3), dtype=np.uint8)
    images.flush()
    del images
    np.save(test / "labels.npy", rng.integers(0, 10, n).astype(np.int64))


def _stage(root: Path, name: str, *sets: str) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", name, "--root", str(root), "--params",
                           str(root / "params.yaml"), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_json(root / "metrics" / f"{name}.json")


def test_evaluate_and_bench_stream_10k_images_in_bounded_memory(tmp_path):
    root = _rgb_project(tmp_path)
    runs = {}
    for n in (1_000, 10_000):
        _big_test_split(root, n)
        runs[n] = (_stage(root, "evaluate", "evaluate.batch_size=64"),
                   _stage(root, "bench", "bench.runs=20", "bench.warmup=2", "bench.pytorch_reference=false"))
    (small, small_bench), (big, big_bench) = runs[1_000], runs[10_000]
    assert big["images"] == 10_000
    assert {n: c["status"] for n, c in big["candidates"].items()} == {"baseline_fp32_ort": "ok",
                                                                       "baseline_fp32_ov": "ok"}
    assert {n: c["status"] for n, c in big_bench["candidates"].items()} == {"baseline_fp32_ort": "ok",
                                                                             "baseline_fp32_ov": "ok"}
    split_mb = (root / "data" / "prepared" / "test" / "images.npy").stat().st_size / 2**20
    float32_mb = big["memory"]["test_split_float32_mb"]
    assert float32_mb > 110  # 10,000 x 3 x 32 x 32 x 4 bytes
    mem = {"evaluate_anon_peak_mb": (small["memory"]["anon_rss_peak_mb"], big["memory"]["anon_rss_peak_mb"]),
           "evaluate_stream_growth_mb": (small["memory"]["stream_growth_mb"], big["memory"]["stream_growth_mb"]),
           "evaluate_peak_rss_mb": (small["cost"]["peak_rss_mb"], big["cost"]["peak_rss_mb"]),
           "bench_peak_rss_mb": (small_bench["cost"]["peak_rss_mb"], big_bench["cost"]["peak_rss_mb"])}
    print(f"\ntest split: 10,000 images = {split_mb:.1f} MB uint8 on disk, {float32_mb:.1f} MB as float32")
    for key, (a, b) in mem.items():
        print(f"  {key:28s} 1,000 images: {a:7.1f}   10,000 images: {b:7.1f}   growth {b - a:+.1f}")
    # 10x the images, same memory: the anonymous peak (arrays, heap) grows far less than the split takes in float32
    grew = {key: b - a for key, (a, b) in mem.items()}
    assert grew["evaluate_anon_peak_mb"] < float32_mb / 8, mem
    assert grew["bench_peak_rss_mb"] < float32_mb / 8, mem  # bench times batch-1 inputs; it never reads the split
    # total RSS (VmHWM) may also count the pages of the memory-mapped uint8 file read so far: page cache the kernel
    # reclaims at will, at most the file's size; nothing else grows
    assert grew["evaluate_peak_rss_mb"] < split_mb * 0.9 + float32_mb / 8, mem
    # what streaming costs at all (one batch in the runtime) is small next to the split in float32
    assert big["memory"]["stream_growth_mb"] < float32_mb / 4, mem
