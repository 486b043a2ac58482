"""Shared fixtures: a tiny project (prepared digits + a quickly trained baseline) in a temp directory.

Built once per session and copied per test, so stage tests run on real data and a real (small) model in
seconds, independent of the prepare/train stage implementations.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("EDGEOPT_NO_PROGRESS", "1")
# Flows run by tests use a Prefect home of their own, one per test process: never the user's ~/.prefect (or a
# server PREFECT_API_URL names), and never a SQLite file shared by two pytest-xdist workers running side by side.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="edgeopt-tests-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # slow while another worker runs
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
REPO = Path(__file__).resolve().parents[1]
CIFAR_SUBSET = REPO.parent / "shared" / "data" / "cifar10-subset" / "train"


def write_prepared(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], seed: int = 0) -> Path:
    """Write the data/prepared layout (stratified 70/10/20) without going through the prepare stage."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    trval, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    train, val = train_test_split(trval, test_size=0.125, stratify=labels[trval], random_state=seed)
    prepared = root / "data" / "prepared"
    counts = {}
    for name, ix in (("train", train), ("val", val), ("test", test)):
        (prepared / name).mkdir(parents=True, exist_ok=True)
        np.save(prepared / name / "images.npy", images[ix])
        np.save(prepared / name / "labels.npy", labels[ix].astype(np.int64))
        counts[name] = {c: int((labels[ix] == i).sum()) for i, c in enumerate(classes)}
    x = images[train].astype(np.float32) / 255.0
    meta = {"source": "test", "classes": classes, "num_classes": len(classes), "image_size": images.shape[1],
            "channels": images.shape[3], "layout": "NCHW", "dtype": "float32", "color_order": "RGB" if images.shape[3] == 3 else "L",
            "mean": x.mean(axis=(0, 1, 2)).tolist(), "std": (x.std(axis=(0, 1, 2)) + 1e-6).tolist(),
            "counts": counts, "content_hash": "test"}
    (prepared / "meta.json").write_text(json.dumps(meta))
    return prepared


def digits_arrays(size: int = 16):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
    imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in imgs])[..., None]
    return imgs, d.target.astype(np.int64), [str(i) for i in range(10)]


@pytest.fixture(scope="session")
def _tiny_project_template(tmp_path_factory) -> Path:
    import torch

    from edgeopt.models import build_model, model_config, save_checkpoint
    from edgeopt.params import load_params
    from edgeopt.training import Splits, evaluate, fit, set_seed

    root = tmp_path_factory.mktemp("tiny_template")
    imgs, labels, classes = digits_arrays()
    write_prepared(root, imgs, labels, classes)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml")
    set_seed(0, 2)
    splits = Splits.load(root / "data" / "prepared")
    cfg = model_config("small_cnn", 10, 1, 1.0, True, 16)
    model = build_model(cfg)
    fit(model, splits, params.train, seed=0, epochs=4, desc="fixture")
    acc = evaluate(model, splits, "test")["accuracy"]
    save_checkpoint(root / "models" / "baseline.pt", model, cfg, {"test_accuracy": acc})
    torch.set_num_threads(2)
    return root


@pytest.fixture()
def tiny_project(_tiny_project_template, tmp_path) -> Path:
    """A project dir with params.yaml, data/prepared (digits 16x16) and models/baseline.pt (~95 % test acc)."""
    dst = tmp_path / "proj"
    shutil.copytree(_tiny_project_template, dst)
    return dst


@pytest.fixture()
def tiny_params(tiny_project):
    """Params for fast tests: few epochs everywhere."""
    from edgeopt.params import load_params

    return load_params(tiny_project / "params.yaml", [
        "train.epochs=2", "finetune.epochs=2", "distill.epochs=2", "cluster.finetune_epochs=1",
        "quantize.calibration_size=100", "sensitivity.max_samples=100", "bench.runs=20", "bench.warmup=2"])


@pytest.fixture()
def one_thread():
    """Tiny models: one torch thread is fastest and immune to other processes competing for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reproduced_clone(tmp_path_factory):
    """(root, result): a fresh clone after one `dvc repro` (short training), shared by the tests that only read it
    or put back what they change: the whole chain runs once per session, not once per test module."""
    import sys

    from tests.test_dvc_pipeline import fresh_clone, run

    root = fresh_clone(tmp_path_factory.mktemp("reproduced") / "clone")
    res = run([sys.executable, "-m", "dvc", "repro"], root, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, res


@pytest.hookimpl(trylast=True)  # after `-m` deselection: a file whose slow tests are all deselected is not slow
def pytest_collection_modifyitems(config, items):
    """Files holding slow tests run first (order otherwise kept): with two pytest-xdist workers taking whole files
    (`make test`), the long files start early and the short ones fill the gaps, instead of one starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
