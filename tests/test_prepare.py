"""prepare: sources, stratified seeded splits, duplicates. (Bad image folders: tests/reliability/test_bad_data.py.)"""
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
