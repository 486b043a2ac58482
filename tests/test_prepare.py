"""prepare: sources, stratified seeded splits, and clear errors for bad image folders with nothing half written."""
import json

import numpy as np
import pytest
from PIL import Image

from edgeopt.arrays import DataError, load_meta, open_split
from edgeopt.params import load_params
from edgeopt.paths import Paths
from tests.conftest import REPO


def params_for(tmp_path, *overrides):
    return load_params(REPO / "params.yaml", list(overrides))


def make_folder(root, classes=("cat", "dog"), n=12, size=20, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3 if mode == "RGB" else 1), dtype=np.uint8)
            Image.fromarray(arr.squeeze()).save(root / c / f"{i}.png")
    return root


def folder_params(root, **extra):
    sets = [f"data.source=imagefolder", f"data.root={root}", "data.channels=3", "data.image_size=16"]
    return load_params(REPO / "params.yaml", sets + [f"{k}={v}" for k, v in extra.items()])


def test_digits_splits_are_stratified_seeded_and_hashed(tmp_path):
    from stages import prepare

    paths = Paths(tmp_path)
    m = prepare.run(params_for(tmp_path), paths)
    meta = load_meta(paths.prepared)
    assert m["images"] == 1797 and meta["num_classes"] == 10
    sizes = {s: len(open_split(paths.prepared, s)[1]) for s in ("train", "val", "test")}
    assert sizes["test"] == 360 and sizes["val"] == 180 and sum(sizes.values()) == 1797
    test_counts = list(meta["counts"]["test"].values())
    assert max(test_counts) - min(test_counts) <= 2  # stratified
    x, _ = open_split(paths.prepared, "train")
    assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 1)
    first_hash = meta["content_hash"]
    prepare.run(params_for(tmp_path), paths)
    assert load_meta(paths.prepared)["content_hash"] == first_hash  # same seed, same splits
    prepare.run(params_for(tmp_path, "seed=1"), paths)
    assert load_meta(paths.prepared)["content_hash"] != first_hash
    assert len(list((paths.prepared / "samples").glob("*.png"))) == 10


def test_imagefolder_reads_classes_and_converts(tmp_path):
    from stages import prepare

    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c"), n=10)
    Image.new("L", (40, 30)).save(root / "a" / "gray_odd_size.png")  # converted to RGB, resized
    paths = Paths(tmp_path / "proj")
    prepare.run(folder_params(root), paths)
    meta = load_meta(paths.prepared)
    assert meta["classes"] == ["a", "b", "c"] and meta["channels"] == 3
    assert open_split(paths.prepared, "train")[0].shape[1:] == (16, 16, 3)


@pytest.mark.parametrize("breakage, expected", [
    ("corrupt", r"corrupt or truncated image \(1\): dog/broken\.png"),
    ("truncated", r"corrupt or truncated image \(1\): dog/cut\.png"),
    ("empty_class", r"empty class folder \(1\): bird/"),
    ("non_image", r"not an image file \(1\): cat/notes\.txt"),
    ("one_class", r"only one class \(cat\)"),
])
def test_bad_image_folders_fail_clearly_and_keep_previous_output(tmp_path, breakage, expected):
    from stages import prepare

    paths = Paths(tmp_path / "proj")
    good = make_folder(tmp_path / "good")
    prepare.run(folder_params(good), paths)  # a previous good run
    before = (paths.prepared / "meta.json").read_bytes()

    bad = make_folder(tmp_path / "bad", classes=("cat",) if breakage == "one_class" else ("cat", "dog"))
    if breakage == "corrupt":
        (bad / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif breakage == "truncated":
        data = (bad / "dog" / "0.png").read_bytes()
        (bad / "dog" / "cut.png").write_bytes(data[: len(data) // 2])
    elif breakage == "empty_class":
        (bad / "bird").mkdir()
    elif breakage == "non_image":
        (bad / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=expected):
        prepare.run(folder_params(bad), paths)
    assert (paths.prepared / "meta.json").read_bytes() == before  # nothing half written, old output intact
    assert not [p for p in paths.prepared.parent.iterdir() if p.name.startswith(".prepared")]


def test_wrong_size_is_an_error_when_resize_is_off(tmp_path):
    from stages import prepare

    root = make_folder(tmp_path / "imgs", size=16)
    Image.new("RGB", (32, 32)).save(root / "cat" / "big.png")
    with pytest.raises(DataError, match=r"wrong size .*cat/big\.png is 32x32"):
        prepare.run(folder_params(root, **{"data.resize": "false"}), Paths(tmp_path / "proj"))


def test_exact_duplicates_are_dropped_before_splitting(tmp_path):
    from stages import prepare

    root = make_folder(tmp_path / "imgs", n=12)
    for i in range(5):
        (root / "cat" / f"copy{i}.png").write_bytes((root / "cat" / "0.png").read_bytes())
    m = prepare.run(folder_params(root), Paths(tmp_path / "proj"))
    assert m["duplicates_removed"] == 5 and m["images"] == 24


def test_missing_cifar10_names_the_expected_path(tmp_path):
    from stages import prepare

    params = load_params(REPO / "params.yaml", ["data.source=cifar10", f"data.root={tmp_path / 'c10'}",
                                                "data.download=false", "data.channels=3", "data.image_size=32"])
    with pytest.raises(DataError, match=r"expected the extracted python version at .*c10/cifar-10-batches-py"):
        prepare.run(params, Paths(tmp_path / "proj"))


def test_cli_reports_bad_folder_in_one_message(tmp_path):
    import subprocess, sys

    root = make_folder(tmp_path / "imgs")
    (root / "mouse").mkdir()
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "prepare", "--root", str(tmp_path / "proj"),
                           "--params", str(REPO / "params.yaml"), "--set", "data.source=imagefolder",
                           "--set", f"data.root={root}", "--set", "data.channels=3"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "empty class folder (1): mouse/" in proc.stderr and "Traceback" not in proc.stderr
