"""`edgeopt evaluate-release`: a real release on labelled folders it never saw, torch-free, in a subprocess."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from edgeopt.arrays import open_split
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry
from tests.release_helpers import release_project, release_template, run_cli  # noqa: F401
from tests.test_bench import _run, _torch_blocked_env

MODEL = "digits-classifier"
RECORDED = 94.8  # tests/release_helpers.ACCURACY of the gate's pick, finetuned_ov_fp16 (OpenVINO FP16)


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray, transform=None) -> Path:
    for i, (im, y) in enumerate(zip(images, labels)):
        img = Image.fromarray(im[..., 0], mode="L")
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        (transform(img) if transform else img).save(root / str(y) / f"{i:05d}.png")
    return root


@pytest.fixture()
def released(release_project, tmp_path):
    """The gate's pick (finetuned_ov_fp16) promoted to staging and pulled; the test split as a labelled folder."""
    from stages.gate import run as gate
    from stages.promote import run as promote

    root = release_project
    params = load_params(root / "params.yaml")
    gate(params, Paths(root))
    assert promote(params, Paths(root))["candidate"] == "finetuned_ov_fp16"
    Registry(root / "registry").pull(f"{MODEL}@staging", tmp_path / "rel")
    images, labels = open_split(root / "data" / "prepared", "test")
    data = _write_folder(tmp_path / "new", np.asarray(images), labels)
    return root, tmp_path / "rel", data, (np.asarray(images), labels)


def _evaluate(cwd: Path, *args: str, env: dict | None = None):
    res = run_cli(cwd, "evaluate-release", *args, env=env)
    return res, (json.loads(res.stdout) if "--json" in args and res.stdout.startswith("{") else None)


def test_clean_folder_with_a_missing_class_and_junk_files(released, tmp_path):
    root, rel, data, (images, labels) = released
    shutil.rmtree(data / "7")                            # a class missing from the folder: reported absent
    (data / "3" / "notes.txt").write_text("not an image")  # junk and a corrupt PNG: skipped, listed
    (data / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (data / ".cache").mkdir()                            # hidden folder: ignored, not an unknown class
    res, report = _evaluate(tmp_path, str(rel), str(data), "--json", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    kept = labels != 7
    assert report["images"] == int(kept.sum()) == sum(r["images"] for r in report["per_class"])
    assert report["absent_classes"] == ["7"] and report["ignored"] == [".cache/"]
    row7 = next(r for r in report["per_class"] if r["class"] == "7")
    assert row7 == {"class": "7", "images": 0, "correct": 0, "accuracy": None, "status": "absent"}
    assert report["skipped"]["count"] == 2
    assert report["skipped"]["by_problem"] == {"not an image file": 1, "corrupt or truncated image": 1}
    assert {s["file"] for s in report["skipped"]["files"]} == {"3/notes.txt", "4/broken.png"}

    # the numbers are those of the release's own runtime on the decoded pixels
    from edgeopt.runtime import load_model, predict_images

    manifest = json.loads((rel / "manifest.json").read_text())
    model = load_model(rel / manifest["primary"], runtime=manifest["runtime"])
    pred = predict_images(model, images[kept], manifest["input"]["mean"], manifest["input"]["std"]).argmax(1)
    m = np.asarray(report["confusion"]["matrix"])
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (labels[kept], pred), 1)
    np.testing.assert_array_equal(m, expected)
    assert report["accuracy"] == round(100 * float((pred == labels[kept]).mean()), 2)
    lo, hi = report["accuracy_ci95"]
    assert lo < report["accuracy"] < hi
    d = report["drift"]
    assert d["recorded_accuracy"] == RECORDED and d["recorded_split"] == "test" and d["max_drop_pt"] == 2.0
    assert d["passed"] is True and d["difference_pt"] == round(report["accuracy"] - RECORDED, 2)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"] == report["accuracy"]
    with Image.open(tmp_path / "out" / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] >= 500

    text, _ = _evaluate(tmp_path, str(rel), str(data), "--out", str(tmp_path / "out"))
    assert text.returncode == 0, text.stderr
    assert "Skipped 2 file(s), not counted: 1 not an image file, 1 corrupt or truncated image" in text.stdout
    assert f"vs {RECORDED:.2f} % recorded in the manifest (test split, 360 images)" in text.stdout
    assert "-> ok" in text.stdout and "1 class(es) absent" in text.stdout
    assert any(ln.split()[:2] == ["7", "0"] and ln.endswith("absent") for ln in text.stdout.splitlines())


def test_unknown_class_folder_is_a_clear_error(released, tmp_path):
    _, rel, data, _ = released
    shutil.copytree(data / "1", data / "cat")
    res, _ = _evaluate(tmp_path, str(rel), str(data))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert line.count("\n") == 0 and "'cat'" in line and "not known to digits-classifier@0.0.1" in line
    assert "'0', '1', '2'" in line and "'9'" in line  # the classes it does know
    assert not (tmp_path / "release-eval").exists()   # nothing written


def test_drifted_copy_exits_3_and_names_the_figures(released, tmp_path):
    """Inverted images (a camera with inverted polarity): accuracy collapses, exit 3."""
    root, rel, data, (images, labels) = released
    drifted = _write_folder(tmp_path / "inverted", images, labels, ImageOps.invert)
    res, report = _evaluate(tmp_path, str(rel), str(drifted), "--json")
    assert res.returncode == 3, res.stderr
    assert report["status"] == "drift" and report["drift"]["passed"] is False
    assert report["accuracy"] < RECORDED - 2.0
    text, _ = _evaluate(tmp_path, str(rel), str(drifted), "--max-drop", "1.5")
    assert text.returncode == 3
    assert f"here vs {RECORDED:.2f} % recorded in the manifest" in text.stdout
    assert "allowed drop 1.50 pt -> FAILED (exit 3)" in text.stdout
    # a heavy blur through the registry ref: also drift; a threshold of 100 points accepts anything
    blurred = _write_folder(tmp_path / "blur", images, labels, lambda im: im.filter(ImageFilter.GaussianBlur(4)))
    ref = f"registry:{MODEL}@staging"
    res, report = _evaluate(root, ref, str(blurred), "--json")
    assert res.returncode == 3 and report["release"] == f"{MODEL}@0.0.1"
    assert _evaluate(root, ref, str(blurred), "--max-drop", "100")[0].returncode == 0
    # --report-only: the figures without a verdict, exit 0 whatever the accuracy
    res, report = _evaluate(root, ref, str(blurred), "--json", "--report-only")
    assert res.returncode == 0 and report["status"] == "not_checked" and report["drift"]["passed"] is None
    assert report["accuracy"] < RECORDED - 2.0 and "without a drift check" in report["drift"]["compared"]
    both = _evaluate(root, ref, str(blurred), "--report-only", "--max-drop", "1")[0]  # which one was meant?
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.parametrize("metrics", [{}, {"accuracy": None}, {"accuracy": "94.8"}, {"accuracy": True}])
def test_a_drift_check_that_cannot_compare_never_reads_as_passed(metrics):
    """A manifest without a numeric accuracy (a hand-published release): CI asked for a drift check that could not
    run; exit 4 (the check's input is missing), never 0, unless --report-only said no check was wanted."""
    from edgeopt.release_eval import Folder, format_text, summarize

    measured = {"confusion": np.array([[3, 1], [0, 4]]), "skipped": {"count": 0, "by_problem": {}, "files": []},
                "wall_s": 0.1, "images_per_s": 80.0, "memory": {}}
    folder = Folder(Path("new"), ["a", "b"], {"a": Path("new/a"), "b": Path("new/b")})
    report = summarize({"name": MODEL, "version": "0.0.1", "metrics": metrics}, folder, measured, 2.0)
    assert report["status"] == "not_compared" and report["drift"]["passed"] is None and report["accuracy"] == 87.5
    assert "the manifest records no accuracy -> NOT COMPARED (exit 4)" in format_text(report)
    only = summarize({"name": MODEL, "version": "0.0.1", "metrics": metrics}, folder, measured, None)
    assert only["status"] == "not_checked" and "without a drift check" in only["drift"]["compared"]


def test_a_release_without_a_recorded_accuracy_exits_4_unless_report_only(tmp_path):
    """The CLI's exit codes for the two: a CI drift step on such a release fails, a report-only step does not."""
    release = _big_release(tmp_path, metrics={})
    _tiny_pngs(tmp_path / "d", 20)
    res, report = _evaluate(tmp_path, str(release), str(tmp_path / "d"), "--json")
    assert res.returncode == 4 and report["status"] == "not_compared" and report["images"] == 20
    text = _evaluate(tmp_path, str(release), str(tmp_path / "d"))[0]
    assert text.returncode == 4 and "NOT COMPARED (exit 4)" in text.stdout
    res, report = _evaluate(tmp_path, str(release), str(tmp_path / "d"), "--json", "--report-only")
    assert res.returncode == 0 and report["status"] == "not_checked"


def test_undecodable_only_and_tampered_release(released, tmp_path):
    _, rel, _, _ = released
    bad = tmp_path / "bad"
    for cls in ("0", "1"):
        (bad / cls).mkdir(parents=True)
        (bad / cls / "x.png").write_bytes(b"not a png")
    res, _ = _evaluate(tmp_path, str(rel), str(bad))
    assert res.returncode == 1 and "no image could be evaluated (2 file(s) skipped: 2 corrupt" in res.stderr
    res, _ = _evaluate(tmp_path, str(rel), str(tmp_path / "missing"))
    assert res.returncode == 2 and "not a folder" in res.stderr
    (rel / "model.bin").chmod(0o644)
    with open(rel / "model.bin", "ab") as f:
        f.write(b"\0")
    res, _ = _evaluate(tmp_path, str(rel), str(bad))
    assert res.returncode == 1 and "fails verification" in res.stderr


def test_torch_free(released, tmp_path):
    _, rel, data, _ = released
    env = _torch_blocked_env(tmp_path)
    code = ("import sys; from edgeopt.cli import main; rc = main(sys.argv[1:]); "
            "assert not sys.modules.get('torch'), 'torch imported'; sys.exit(rc)")
    res = _run(["-c", code, "evaluate-release", str(rel), str(data), "--json", "--out", str(tmp_path / "o")],
               env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == 360


# --- 10,000 images in bounded memory ---------------------------------------------------------------------------

def _big_release(tmp_path: Path, metrics: dict | None = None) -> Path:
    """A release whose input contract is 64x64 RGB (a hand-made ONNX model: channel means -> 10 logits), so each
    decoded image holds 12 KB: keeping 10,000 of them (or their float32 copies) would show at once."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["y"])],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], [w, axes])
    model_path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), model_path)
    reg = Registry(tmp_path / "registry")
    manifest = {"primary": "model.onnx", "runtime": "onnxruntime", "candidate": "hand_made",
                "classes": list("abcdefghij"),
                "input": {"layout": "NCHW", "channels": 3, "color_order": "RGB", "mean": [0.5] * 3, "std": [0.25] * 3,
                          "resize": {"size": [64, 64]}},
                "metrics": {"accuracy": 10.0, "split": "test", "images": 1000} if metrics is None else metrics}
    return reg.publish("big", {"model.onnx": model_path}, manifest)["path"]


def _tiny_pngs(root: Path, n: int) -> None:
    """n 4x4 RGB PNGs (about 80 bytes each on disk; 64x64x3 once decoded) in 10 class folders."""
    import io

    rng = np.random.default_rng(1)
    encoded = []
    for _ in range(10):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    for c in "abcdefghij":
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "abcdefghij"[i % 10] / f"{i}.png").write_bytes(encoded[i // 10 % 10])


def test_10k_images_stream_in_bounded_memory(tmp_path):
    release = _big_release(tmp_path)
    runs = {}
    for n in (1_000, 10_000):
        _tiny_pngs(tmp_path / f"d{n}", n)
        res, report = _evaluate(tmp_path, str(release), str(tmp_path / f"d{n}"), "--json", "--max-drop", "100")
        assert res.returncode == 0, res.stderr
        assert report["images"] == n and report["skipped"]["count"] == 0
        runs[n] = report["memory"]
    decoded_mb = 10_000 * 64 * 64 * 3 / 2**20  # 117 MB as uint8, 469 MB as float32
    growth = {n: m["anon_rss_peak_mb"] - m["anon_rss_start_mb"] for n, m in runs.items()}
    print(f"\nanonymous RSS growth while streaming: 1,000 images {growth[1_000]:.1f} MB, "
          f"10,000 images {growth[10_000]:.1f} MB (10,000 decoded images: {decoded_mb:.0f} MB as uint8)")
    assert growth[10_000] - growth[1_000] < decoded_mb / 20, runs   # 10x the images, (next to) no extra memory
    # what streaming costs at all: a few batches plus the runtime's arena (13.2 and 14.8 MB in two runs on
    # the same machine), far below holding the decoded images
    assert growth[10_000] < decoded_mb / 6, runs
