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


# --- separate test sets (issue 12 item 2) ---------------------------------------------------------------------
def write_fake_cifar10(root, per_batch=30, n_test=40):
    """A tiny cifar-10-batches-py in the official format (pickled dicts: data uint8 (N, 3072) channel-planar,
    labels list; batches.meta with label_names). Returns (train images, train labels, test images, test labels)
    as the HWC uint8 arrays torchvision gives."""
    import pickle

    rng = np.random.default_rng(7)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    out = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels, "batch_label": name}))
        out[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    train = [out[f"data_batch_{i}"] for i in range(1, 6)]
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), *out["test_batch"]


@pytest.fixture()
def fake_cifar10(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # the fake has other md5 sums
    return tmp_path / "c10", write_fake_cifar10(tmp_path / "c10")


def cifar_params(root, *extra):
    return load_params(REPO / "params.yaml", ["data.source=cifar10", f"data.root={root}", "data.download=false",
                                              "data.channels=3", "data.image_size=32", *extra])


def test_cifar10_test_split_is_the_official_test_batch(tmp_path, fake_cifar10):
    from stages import prepare

    root, (train_x, train_y, test_x, test_y) = fake_cifar10
    paths = Paths(tmp_path / "proj")
    m = prepare.run(cifar_params(root), paths)
    meta = load_meta(paths.prepared)
    x, y = open_split(paths.prepared, "test")
    np.testing.assert_array_equal(x, test_x)  # all 40 test-batch images, in their order, nothing else
    np.testing.assert_array_equal(y, test_y)
    assert meta["files"]["test"] == [f"cifar10/test/{i}" for i in range(40)]
    assert m["train_images"] + m["val_images"] == 150 and m["val_images"] == 15  # val_fraction 0.1 of 150
    assert all(n.startswith("cifar10/train/") for s in ("train", "val") for n in meta["files"][s])
    train_val = np.concatenate([open_split(paths.prepared, s)[0] for s in ("train", "val")])
    assert {a.tobytes() for a in train_val} == {a.tobytes() for a in train_x}
    assert meta["split_sources"]["test"] == {"from": "CIFAR-10 official test batch test_batch (40 images)",
                                             "how": "all of it (a separate test set)"}
    assert meta["split_sources"]["val"]["from"].startswith("CIFAR-10 training batches data_batch_1..5 (150")


def test_cifar10_carves_test_from_all_images_when_official_test_is_off(tmp_path, fake_cifar10):
    from stages import prepare

    root, _ = fake_cifar10
    paths = Paths(tmp_path / "proj")
    m = prepare.run(cifar_params(root, "data.official_test=false"), paths)
    meta = load_meta(paths.prepared)
    assert (m["train_images"], m["val_images"], m["test_images"]) == (133, 19, 38)  # 70/10/20 of 190
    origins = {n.split("/")[1] for n in meta["files"]["test"]}
    assert origins == {"train", "test"}  # carved from the mixed pool
    assert meta["split_sources"]["test"]["how"] == "stratified, seeded: data.test_fraction 0.2 of all"


def test_cifar10_official_test_with_a_cap_keeps_the_train_test_ratio(tmp_path, fake_cifar10):
    from stages import prepare

    root, _ = fake_cifar10
    m = prepare.run(cifar_params(root, "data.max_images_per_class=10"), Paths(tmp_path / "proj"))
    # 10 per class of the 15 training images; the test batch (4 per class) capped at ceil(10 * 0.2 / 0.8) = 3
    assert m["train_images"] + m["val_images"] == 100 and m["test_images"] == 30


def test_imagefolder_test_root_is_the_test_split_and_train_val_use_all_of_root(tmp_path):
    from stages import prepare

    root = make_folder(tmp_path / "train", classes=("a", "b", "c"), n=10)
    test = tmp_path / "test"
    for c in ("a", "b", "c"):
        (test / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (ord(c), i * 40, 9)).save(test / c / f"t{i}.png")
    (test / "b" / "copy.png").write_bytes((root / "b" / "3.png").read_bytes())  # a training image in test
    paths = Paths(tmp_path / "proj")
    m = prepare.run(folder_params(root, **{"data.test_root": test}), paths)
    meta = load_meta(paths.prepared)
    assert m["test_images"] == 13 and m["duplicates_removed"] == 1  # the test tree is kept whole ...
    assert "b/3.png" not in meta["files"]["train"] + meta["files"]["val"]  # ... its duplicate leaves train
    assert sorted(meta["files"]["test"]) == sorted([f"{c}/t{i}.png" for c in "abc" for i in range(4)] + ["b/copy.png"])
    assert m["train_images"] + m["val_images"] == 29 and m["val_images"] == 3
    assert meta["test_root"] == str(test) and meta["split_sources"]["test"]["from"] == f"image folder {test} (13 files)"
    assert meta["split_sources"]["train"]["from"] == f"image folder {root} (30 files)"
    assert meta["counts"]["test"] == {"a": 4, "b": 5, "c": 4}


def test_a_test_root_without_class_folders_carves_the_test_split(tmp_path):
    """The shipped data/raw/test-images holds only a README: a dvc.yaml dep that exists, and no test set."""
    from stages import prepare

    root = make_folder(tmp_path / "train")
    empty = tmp_path / "test-images"
    empty.mkdir()
    (empty / "README.md").write_text("put a test set here")
    params = load_params(REPO / "params.yaml", ["data.source=imagefolder", f"data.root={root}", "data.channels=3",
                                                 "data.image_size=16", f"data.test_root={empty}"])
    prepare.run(params, Paths(tmp_path))
    meta = load_meta(tmp_path / "data" / "prepared")
    assert meta["test_root"] is None and meta["split_sources"]["test"]["how"].startswith("stratified, seeded")
    assert sum(meta["counts"]["test"].values()) > 0


def test_missing_test_root_names_the_folder(tmp_path):
    from stages import prepare

    root = make_folder(tmp_path / "train")
    with pytest.raises(DataError, match=r"data\.test_root .*/nowhere does not exist; set it to a folder with the "
                                        r"same class folders"):
        prepare.run(folder_params(root, **{"data.test_root": tmp_path / "nowhere"}), Paths(tmp_path / "proj"))


# --- bounded memory (issue 16) ----------------------------------------------------------------------------------
def test_npy_writer_writes_what_np_save_writes_block_by_block(tmp_path):
    from edgeopt.arrays import NpyWriter

    arr = np.random.default_rng(0).integers(0, 256, (37, 5, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "ref.npy", arr)
    with NpyWriter(tmp_path / "out.npy", arr.shape) as w:
        for start in range(0, 37, 8):
            w.write(arr[start:start + 8])
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    with pytest.raises(ValueError, match=r"36 of 37 rows written"):
        with NpyWriter(tmp_path / "short.npy", arr.shape) as w:
            w.write(arr[:36])
    with pytest.raises(ValueError, match=r"do not fit"):
        NpyWriter(tmp_path / "wide.npy", (2, 5, 5, 1)).write(arr[:1])


STREAMING_CHILD = r"""
import json, sys
from pathlib import Path
from edgeopt.params import load_params
from edgeopt.paths import Paths
from stages import prepare

def kb(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

small, big, project = sys.argv[1:4]
sets = ["data.source=imagefolder", "data.channels=3", "data.image_size=64"]
prepare.run(load_params(sys.argv[4], sets + [f"data.root={small}"]), Paths(Path(project) / "warm"))  # imports, caches
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = kb("VmRSS")
m = prepare.run(load_params(sys.argv[4], sets + [f"data.root={big}"]), Paths(Path(project) / "big"))
print(json.dumps({"peak_growth_kb": kb("VmHWM") - before, "images": m["images"]}))
"""


def _smooth_pngs(folder, n, rng):
    """n distinct 64x64 RGB PNGs (8x8 random blocks: small files, 12 KB each decoded)."""
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                                np.ones((8, 8, 1), np.uint8))).save(folder / f"{i:05d}.png", compress_level=1)


def test_prepare_streams_a_folder_several_times_larger_than_its_memory_budget(tmp_path):
    """4,000 images of 64x64 RGB decode to 47 MiB; preparing them may grow the process's peak resident memory by
    at most 10 MB (a fifth of it). Reading the whole folder into memory, as prepare did before, grows it by
    more than 250 MB (a list of arrays, np.stack, a float32 copy of train)."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c", "d"):
        _smooth_pngs(tmp_path / "big" / c, 1000, rng)
        _smooth_pngs(tmp_path / "small" / c, 10, rng)
    decoded_mb = 4000 * 64 * 64 * 3 / 2**20
    budget_mb = 10
    assert decoded_mb > 4 * budget_mb
    proc = subprocess.run([sys.executable, "-c", STREAMING_CHILD, str(tmp_path / "small"), str(tmp_path / "big"),
                           str(tmp_path / "proj"), str(REPO / "params.yaml")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"decoded {decoded_mb:.0f} MB, peak RSS growth {out['peak_growth_kb'] / 1024:.1f} MB")
    assert out["images"] == 4000
    assert out["peak_growth_kb"] / 1024 < budget_mb
    x, _ = open_split(tmp_path / "proj" / "big" / "data" / "prepared", "train")
    assert x.shape == (2800, 64, 64, 3)
    with Image.open(tmp_path / "big" / "a" / "00000.png") as im:  # the pixels made it through the store
        first = np.asarray(im.convert("RGB"))
    meta = load_meta(tmp_path / "proj" / "big" / "data" / "prepared")
    split = next(s for s in ("train", "val", "test") if "a/00000.png" in meta["files"][s])
    np.testing.assert_array_equal(open_split(tmp_path / "proj" / "big" / "data" / "prepared", split)[0][
        meta["files"][split].index("a/00000.png")], first)
