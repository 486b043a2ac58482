"""Issue 7, item 1: bad data. Broken image folders stop `prepare` with one error naming every file, class and
count at fault, and leave the previous data/prepared untouched; broken prepared splits stop `validate` (Great
Expectations) with the failing expectation and row count, or a DataError naming the file."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeopt.arrays import DataError, load_meta, open_split
from edgeopt.io import sha256_tree
from edgeopt.params import load_params
from edgeopt.paths import Paths
from tests.conftest import REPO


def make_folder(root: Path, classes=("cat", "dog"), n: int = 12, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def folder_params(root: Path, *extra: str):
    return load_params(REPO / "params.yaml", ["data.source=imagefolder", f"data.root={root}", "data.channels=3",
                                              "data.image_size=16", *extra])


@contextlib.contextmanager
def no_hang(seconds: int):
    """Fail (instead of hanging the suite) if the block blocks, e.g. on opening a FIFO."""
    def alarm(*_):
        raise TimeoutError(f"blocked for {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height pixels (a decompression bomb needs no more to be opened)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _break(bad: Path, kind: str) -> None:
    if kind == "corrupt":
        (bad / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif kind == "truncated":
        data = (bad / "dog" / "0.png").read_bytes()
        (bad / "dog" / "cut.png").write_bytes(data[: len(data) // 2])
    elif kind == "text_named_jpg":
        (bad / "cat" / "photo.jpg").write_text("<html>404 not found</html>")
    elif kind == "many_corrupt":
        for i in range(12):
            (bad / "cat" / f"zero{i:02d}.png").write_bytes(b"")
        (bad / "dog" / "notes.txt").write_text("hello")
    elif kind == "empty_class":
        (bad / "bird").mkdir()
    elif kind == "non_image":
        (bad / "cat" / "notes.txt").write_text("hello")
    elif kind == "wrong_size":
        Image.new("RGB", (32, 32)).save(bad / "cat" / "big.png")
    elif kind == "mode_16bit":
        Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).save(bad / "dog" / "depth16.png")
    elif kind == "mode_float":
        Image.fromarray(np.random.default_rng(0).random((20, 20), dtype=np.float32)).save(bad / "dog" / "float.tiff")
    elif kind == "bomb":
        _png_header_only(bad / "dog" / "bomb.png", 30000, 30000)
    elif kind == "too_few_in_class":
        (bad / "rare").mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20), (i * 100, 7, 7)).save(bad / "rare" / f"{i}.png")
    elif kind == "same_image_two_labels":
        (bad / "dog" / "dup.png").write_bytes((bad / "cat" / "0.png").read_bytes())
    elif kind == "class_without_test_image":  # 3 images pass the count check, but stratification gives 0 to test
        (bad / "rare").mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 100, 7, 7)).save(bad / "rare" / f"{i}.png")
    elif kind == "tiny_many_classes":  # 5 classes x 3 images: 20 % for test is 3 images for 5 classes
        for c in ("cat", "dog"):
            for f in sorted((bad / c).iterdir())[3:]:
                f.unlink()
        for j, c in enumerate(("ant", "bee", "owl")):
            (bad / c).mkdir()
            for i in range(3):
                Image.new("RGB", (20, 20), (j * 80, i * 100, 7)).save(bad / c / f"{i}.png")
    elif kind == "long_class_name":
        (bad / "cat").rename(bad / ("x" * 150))
    elif kind == "newline_class_name":
        (bad / "cat").rename(bad / "cat\nEvil")
    elif kind == "bidi_class_name":  # a right-to-left override: the name reads differently than it sorts
        (bad / "cat").rename(bad / "cat\u202egnp.exe")
    elif kind == "case_clash":
        (bad / "Dog").mkdir()
        Image.new("RGB", (20, 20), (1, 2, 3)).save(bad / "Dog" / "x.png")
    elif kind == "unicode_clash":  # NFC and NFD spellings of "café": two folders, one name on screen (and on macOS)
        for c, name in (("cat", "caf\u00e9"), ("dog", "cafe\u0301")):
            (bad / c).rename(bad / name)
    elif kind == "symlink_loop":
        (bad / "cat" / "again").symlink_to(bad / "cat", target_is_directory=True)
    elif kind == "broken_symlink":
        (bad / "dog" / "gone.png").symlink_to(bad / "nowhere.png")
    elif kind == "broken_class_link":
        (bad / "bird").symlink_to(bad / "no_such_folder")
    elif kind == "fifo":
        os.mkfifo(bad / "dog" / "pipe.png")
    elif kind == "fifo_no_suffix":
        os.mkfifo(bad / "dog" / "pipe")
    elif kind == "only_hidden_files_in_class":
        (bad / "bird").mkdir()
        (bad / "bird" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    elif kind.startswith("test_root"):
        test = bad.parent / "bad_test"
        make_folder(test, classes=("cat", "dog", "owl") if kind == "test_root_extra_class" else
                    ("cat",) if kind == "test_root_missing_class" else ("cat", "dog"), n=3)
        if kind == "test_root_empty_class":
            for f in (test / "dog").iterdir():
                f.unlink()
        if kind == "test_root_corrupt":
            (test / "dog" / "bad.png").write_bytes(b"nope")
    elif kind == "files_only":
        for c in ("cat", "dog"):
            for f in (bad / c).iterdir():
                f.rename(bad / f"{c}_{f.name}")
            (bad / c).rmdir()


# kind -> (classes of the bad folder, extra params, the exact error text expected)
CASES = {
    "corrupt": (("cat", "dog"), (), r"corrupt or truncated image \(1\): dog/broken\.png \(UnidentifiedImageError\)"),
    "truncated": (("cat", "dog"), (), r"corrupt or truncated image \(1\): dog/cut\.png \(OSError\)"),
    "text_named_jpg": (("cat", "dog"), (), r"corrupt or truncated image \(1\): cat/photo\.jpg"),
    "many_corrupt": (("cat", "dog"), (), r"13 problem\(s\) in the image folder; nothing was written:\n"
                     r"  - not an image file \(1\): dog/notes\.txt\n"
                     r"  - corrupt or truncated image \(12\): cat/zero00\.png .*, \.\.\. \(\+4 more\)"),
    "empty_class": (("cat", "dog"), (), r"empty class folder \(1\): bird/"),
    "non_image": (("cat", "dog"), (), r"not an image file \(1\): cat/notes\.txt"),
    "wrong_size": (("cat", "dog"), ("data.resize=false", "data.image_size=20"),
                   r"wrong size \(data\.resize is false\) \(1\): cat/big\.png \(32x32, expected 20x20\)\n"),
    "mode_16bit": (("cat", "dog"), (), r"unsupported mode \(16-bit/float; convert to 8-bit\) \(1\): "
                   r"dog/depth16\.png \(mode I;16\)"),
    "mode_float": (("cat", "dog"), (), r"unsupported mode \(16-bit/float; convert to 8-bit\) \(1\): "
                   r"dog/float\.tiff \(mode F\)"),
    "bomb": (("cat", "dog"), (), r"too large \(decompression bomb guard\) \(1\): dog/bomb\.png \(Image size "
             r"\(900000000 pixels\) exceeds limit"),
    "one_class": (("cat",), (), r"data source 'imagefolder' has only one class \(cat\)"),
    "files_only": (("cat", "dog"), (), r"no class folders found \(only 24 ignored entries, e\.g\. cat_0\.png: not in "
                   r"a class folder\)"),
    "too_few_in_class": (("cat", "dog"), (), r"classes with fewer than 3 images cannot be split into "
                         r"train/val/test: rare \(2\)"),
    "same_image_two_labels": (("cat", "dog"), (), r"1 identical image\(s\) carry different labels: dog/dup\.png "
                              r"duplicates cat/0\.png with another label"),
    # issue 13 class 6: data edge cases
    "class_without_test_image": (("cat", "dog"), (), r"the data set is too small to split: test has no image of "
                                 r"class rare \(train 2, val 1, test 0\); every class needs images in train, val and "
                                 r"test: add images to these classes or adjust data\.val_fraction"),
    "tiny_many_classes": (("cat", "dog"), (), r"too few images to split: data\.test_fraction 0\.2 puts 3 of 15 images "
                          r"into test, fewer than the 5 classes \(every class needs an image in train, val and test\); "
                          r"add images or raise data\.test_fraction"),
    "val_fraction_too_small": (("cat", "dog", "owl"), ("data.val_fraction=0.05",),
                               r"too few images to split: data\.val_fraction 0\.05 puts 2 of 28 images into val, "
                               r"fewer than the 3 classes"),
    "long_class_name": (("cat", "dog"), (), r"class folder name too long \(over 100 characters or 200 bytes\) "
                        r"\(1\): x{40}\.\.\. \(150 characters\)\n"),
    "newline_class_name": (("cat", "dog"), (), r"class folder name with control or invisible format characters "
                           r"\(1\): 'cat\\nEvil'"),
    "bidi_class_name": (("cat", "dog"), (), r"class folder name with control or invisible format characters "
                        r"\(1\): 'cat\\u202egnp\.exe'"),
    "case_clash": (("cat", "dog"), (), r"class folder names that differ only in case or Unicode normalisation "
                   r"\(1\): 'Dog' and 'dog'"),
    "unicode_clash": (("cat", "dog"), (), r"class folder names that differ only in case or Unicode normalisation "
                      r"\(1\): 'cafe\\u0301' and 'caf\\xe9'"),
    "symlink_loop": (("cat", "dog"), (), r"folder reached twice through symlinks \(a loop or a second link\) \(1\): "
                     r"cat/again/"),
    "broken_symlink": (("cat", "dog"), (), r"broken symlink \(1\): dog/gone\.png"),
    "broken_class_link": (("cat", "dog"), (), r"broken symlink \(1\): bird\n"),
    "fifo": (("cat", "dog"), (), r"not a regular file \(1\): dog/pipe\.png"),
    "fifo_no_suffix": (("cat", "dog"), (), r"not an image file \(1\): dog/pipe\n"),
    "only_hidden_files_in_class": (("cat", "dog"), (), r"empty class folder \(1\): bird/"),
    "test_root_missing_class": (("cat", "dog"), ("data.test_root={test}",),
                                r"\(test: .*/bad_test\): 1 problem\(s\) in the image folder; nothing was "
                                r"written:\n  - class folder missing from data\.test_root \(1\): dog/\n"),
    "test_root_extra_class": (("cat", "dog"), ("data.test_root={test}",),
                              r"class folder only in data\.test_root \(not in data\.root\) \(1\): owl/"),
    "test_root_empty_class": (("cat", "dog"), ("data.test_root={test}",),
                              r"empty class folder \(1\): .*/bad_test/dog/"),
    "test_root_corrupt": (("cat", "dog"), ("data.test_root={test}",),
                          r"corrupt or truncated image \(1\): .*/bad_test/dog/bad\.png"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_image_folder_is_refused_and_previous_output_kept(tmp_path, kind):
    from stages import prepare

    paths = Paths(tmp_path / "proj")
    prepare.run(folder_params(make_folder(tmp_path / "good")), paths)  # a previous good run
    before = sha256_tree(paths.prepared)

    classes, extra, expected = CASES[kind]
    bad = make_folder(tmp_path / "bad", classes=classes)
    _break(bad, kind)
    extra = [e.format(test=tmp_path / "bad_test") for e in extra]
    with no_hang(60), pytest.raises(DataError, match=expected) as err:
        prepare.run(folder_params(bad, *extra), paths)
    assert sha256_tree(paths.prepared) == before  # nothing half written, the old output intact
    assert sorted(p.name for p in paths.prepared.parent.iterdir()) == ["prepared"]  # no temp dirs left
    record = json.loads(paths.metrics("prepare").read_text())  # the latest run's record says why it failed
    assert record["status"] == "failed" and record["exit_code"] == 1 and "ran_with" not in record
    assert record["error"].endswith(str(err.value).splitlines()[0]) or str(err.value) in record["error"]


def test_other_8bit_modes_are_converted_by_the_input_contract(tmp_path):
    """Palette, RGBA, CMYK, grey+alpha and 1-bit images are not errors: converted like PIL converts them."""
    from stages import prepare

    root = make_folder(tmp_path / "imgs", n=10)
    rng = np.random.default_rng(3)
    odd = {}
    for i, mode in enumerate(("P", "RGBA", "CMYK", "LA", "1", "L")):
        im = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert(mode)
        im.save(root / "dog" / f"mode_{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
        odd[f"dog/mode_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"] = i
    paths = Paths(tmp_path / "proj")
    prepare.run(folder_params(root), paths)
    meta = load_meta(paths.prepared)
    found = 0
    for split in ("train", "val", "test"):
        images, _ = open_split(paths.prepared, split)
        for i, name in enumerate(meta["files"][split]):
            if name in odd:
                with Image.open(root / name) as im:
                    np.testing.assert_array_equal(images[i], np.asarray(im.convert("RGB")))
                found += 1
    assert found == len(odd)


def test_hidden_and_stray_entries_are_ignored_but_listed(tmp_path):
    """Hidden folders/files (.cache/, .DS_Store, cat/.thumbs/) and files beside the class folders are not classes
    or images, and are not dropped silently either: the CLI names them and meta.json lists every one."""
    root = make_folder(tmp_path / "imgs")
    (root / ".cache").mkdir()
    Image.new("RGB", (20, 20)).save(root / ".cache" / "x.png")  # would be a third class if it were read
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "labels.csv").write_text("file,label\n")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / ".thumbs").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "cat" / ".thumbs" / "t.png")
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "prepare", "--root", str(tmp_path / "proj"),
                           "--params", str(REPO / "params.yaml"), "--set", "data.source=imagefolder",
                           "--set", f"data.root={root}", "--set", "data.channels=3"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("prepare: ignored 5 hidden or stray entries: .DS_Store (hidden file), .cache/ (hidden folder), "
            "cat/.thumbs/ (hidden folder), cat/.DS_Store (hidden file), labels.csv (not in a class folder) "
            "(all listed in meta.json \"ignored\")") in proc.stdout
    meta = load_meta(tmp_path / "proj" / "data" / "prepared")
    assert meta["classes"] == ["cat", "dog"] and sum(meta["counts"]["train"].values()) + sum(
        meta["counts"]["val"].values()) + sum(meta["counts"]["test"].values()) == 24
    assert [i["path"] for i in meta["ignored"]] == [".DS_Store", ".cache/", "cat/.thumbs/", "cat/.DS_Store",
                                                   "labels.csv"]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ignored"] == 5


def test_symlinked_class_folders_and_files_outside_the_root_are_followed(tmp_path):
    """Decision: symlinks are followed wherever they point (DVC's symlink cache type and shared data mounts are
    made of them; prepare only reads). Broken links and loops are refused (CASES above)."""
    from stages import prepare

    root = make_folder(tmp_path / "imgs")
    outside = tmp_path / "elsewhere"
    (outside / "bird").mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (20, 20), (i * 20, 1, 1)).save(outside / "bird" / f"{i}.png")
    Image.new("RGB", (20, 20), (1, 250, 1)).save(outside / "one_more.png")
    (root / "bird").symlink_to(outside / "bird", target_is_directory=True)
    (root / "cat" / "linked.png").symlink_to(outside / "one_more.png")
    paths = Paths(tmp_path / "proj")
    m = prepare.run(folder_params(root), paths)
    meta = load_meta(paths.prepared)
    assert meta["classes"] == ["bird", "cat", "dog"] and m["images"] == 37
    assert "cat/linked.png" in sum(meta["files"].values(), [])


def test_bad_folder_through_the_cli(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "mouse").mkdir()
    (root / "cat" / "broken.png").write_bytes(b"GIF89a")
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "prepare", "--root", str(tmp_path / "proj"),
                           "--params", str(REPO / "params.yaml"), "--set", "data.source=imagefolder",
                           "--set", f"data.root={root}", "--set", "data.channels=3"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"edgeopt prepare: error: {root}: 2 problem(s) in the image folder; nothing was "
                                  "written:\n"), proc.stderr
    assert "empty class folder (1): mouse/" in proc.stderr and "corrupt or truncated image (1): cat/broken.png" \
        in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "proj" / "data").exists()


# --- validate: the Great Expectations gate on prepared splits ------------------------------------------------
def _edit_split(project: Path, split: str, fn) -> None:
    d = project / "data" / "prepared" / split
    images, labels = fn(np.load(d / "images.npy"), np.load(d / "labels.npy"))
    np.save(d / "images.npy", images)
    np.save(d / "labels.npy", labels)


def _leak(split):
    def edit(images, labels, project):
        train = np.load(project / "data/prepared/train/images.npy")
        images = images.copy()
        images[:7] = train[:7]
        return images, labels
    return split, edit


VALIDATE_CASES = {
    "test_overlaps_train": (*_leak("test"), r"expect_column_values_to_be_in_set\(duplicates_train\) failed on 7 of "
                            r"1797 rows"),
    "val_overlaps_train": (*_leak("val"), r"expect_column_values_to_be_in_set\(duplicates_train\) failed on 7 of "
                           r"1797 rows"),
    "label_outside_classes": ("val", lambda im, lb, p: (im, np.where(np.arange(len(lb)) < 3, 42, lb)),
                              r"expect_column_values_to_be_in_set\(label\) failed on 3 of 1797 rows, "
                              r"e\.g\. 42, 42, 42"),
    "negative_label": ("test", lambda im, lb, p: (im, np.where(np.arange(len(lb)) < 2, -1, lb)),
                       r"expect_column_values_to_be_in_set\(label\) failed on 2 of 1797 rows, e\.g\. -1, -1"),
    "wrong_size": ("test", lambda im, lb, p: (im[:, :15, :15], lb),
                   r"expect_column_values_to_be_between\(height\) failed on 360 of 1797 rows"),
    "wrong_channels": ("test", lambda im, lb, p: (np.repeat(im, 3, axis=3), lb),
                       r"expect_column_values_to_be_in_set\(channels\) failed on 360 of 1797 rows"),
    "wrong_dtype": ("val", lambda im, lb, p: (im.astype(np.float32), lb),
                    r"expect_column_values_to_be_in_set\(dtype\) failed on 180 of 1797 rows, e\.g\. float32"),
}


@pytest.mark.parametrize("case", list(VALIDATE_CASES))
def test_bad_prepared_split_fails_validation_naming_expectation_and_rows(tiny_project, tiny_params, case):
    from stages import validate

    split, edit, expected = VALIDATE_CASES[case]
    _edit_split(tiny_project, split, lambda im, lb: edit(im, lb, tiny_project))
    prepared = sha256_tree(tiny_project / "data" / "prepared")
    with pytest.raises(validate.ValidationFailed, match=expected) as err:
        validate.run(tiny_params, Paths(tiny_project))
    assert "data validation failed; training is blocked" in str(err.value)
    assert sha256_tree(tiny_project / "data" / "prepared") == prepared  # validate never writes the data
    report = json.loads((tiny_project / "metrics" / "validate.json").read_text())
    assert report["success"] is False and report["failed"] >= 1
    assert "**FAILED**" in (tiny_project / "reports" / "validation.md").read_text()


@pytest.mark.parametrize("damage, expected", [
    ("truncated_images", r"data/prepared/test: split 'test' is corrupt"),
    ("label_count", r"data/prepared/val: 180 images but 179 labels; rerun `edgeopt prepare`"),
    ("missing_meta", r"data/prepared/meta\.json: prepared data not found; run `edgeopt prepare`"),
    ("missing_split", r"data/prepared/train: split 'train' not found"),
])
def test_damaged_prepared_files_are_named(tiny_project, tiny_params, damage, expected):
    from stages import validate

    prepared = tiny_project / "data" / "prepared"
    if damage == "truncated_images":
        f = prepared / "test" / "images.npy"
        f.write_bytes(f.read_bytes()[:5000])
    elif damage == "label_count":
        np.save(prepared / "val" / "labels.npy", np.load(prepared / "val" / "labels.npy")[:-1])
    elif damage == "missing_meta":
        (prepared / "meta.json").unlink()
    elif damage == "missing_split":
        (prepared / "train" / "images.npy").unlink()
    with pytest.raises(DataError, match=expected) as err:
        validate.run(tiny_params, Paths(tiny_project))
    record = json.loads((tiny_project / "metrics" / "validate.json").read_text())  # the stage's failure record
    assert record["status"] == "failed" and record["error"].endswith(str(err.value)) and "ran_with" not in record
