"""Issue 13, class 4: `edgeopt predict` applies prepare's input contract through the one shared decoder
(edgeopt/images.py). Modes prepare refuses (16-bit, 32-bit, float) are refused with prepare's words, never silently
mis-scaled; accepted modes give prepare's exact pixels. FIFOs, devices, directories, missing, undecodable,
truncated and bomb files get one line each, no traceback and no hang (a FIFO is never opened blocking); a batch with
bad files names exactly those files. A crafted input contract is refused before any image is decoded."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.release_helpers import REPO, release_template, run_cli  # noqa: F401

from edgeopt.cli import main as cli_main
from edgeopt.images import BOMB, CORRUPT, HIGH_DEPTH, NOT_REGULAR, ImageError, decode
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.predict import load_image

MODEL = "digits-classifier"


@pytest.fixture(scope="module")
def _pulled_template(release_template, tmp_path_factory) -> Path:
    """The INT8 ONNX candidate released and pulled once for the module (gate + promote + pull take seconds)."""
    import shutil

    from stages.gate import run as gate
    from stages.promote import run as promote

    root = tmp_path_factory.mktemp("predict_inputs") / "proj"
    shutil.copytree(release_template, root)
    params = load_params(root / "params.yaml", ["gate.rank_by=size"])
    gate(params, Paths(root))
    promote(params, Paths(root))
    res = run_cli(root, "registry", "pull", f"{MODEL}@staging", "--to", str(root.parent / "rel"))
    assert res.returncode == 0, res.stderr
    images = np.load(root / "data" / "prepared" / "test" / "images.npy")
    Image.fromarray(images[0][..., 0], mode="L").save(root.parent / "good.png")
    return root.parent


@pytest.fixture()
def pulled(_pulled_template, tmp_path):
    """A pulled release (manifest + model.onnx, a copy per test) and one good 16x16 digit image."""
    import shutil

    shutil.copytree(_pulled_template / "rel", tmp_path / "rel")
    shutil.copy(_pulled_template / "good.png", tmp_path / "good.png")
    return tmp_path / "rel", tmp_path / "good.png"


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def make_input(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A bad input file and the exact problem text prepare's decoder reports for it."""
    p = tmp_path / f"in_{kind}.png"
    if kind == "16bit":
        Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(p)
        return p, f"{HIGH_DEPTH} (mode I;16)"
    if kind == "32bit_int":
        p = p.with_suffix(".tiff")
        Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16) * 70000).save(p)
        return p, f"{HIGH_DEPTH} (mode I)"
    if kind == "float":
        p = p.with_suffix(".tiff")
        Image.fromarray(np.random.default_rng(0).random((16, 16), dtype=np.float32)).save(p)
        return p, f"{HIGH_DEPTH} (mode F)"
    if kind == "fifo":
        os.mkfifo(p)
        return p, NOT_REGULAR
    if kind == "char_device":
        return Path("/dev/zero"), NOT_REGULAR
    if kind == "directory":
        p.mkdir()
        return p, NOT_REGULAR
    if kind == "missing":
        return p, "file not found"
    if kind == "html_as_png":
        p.write_text("<html>404</html>")
        return p, f"{CORRUPT} (UnidentifiedImageError)"
    if kind == "truncated":
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:200])
        return p, f"{CORRUPT} (OSError)"
    if kind == "empty":
        p.write_bytes(b"")
        return p, f"{CORRUPT} (UnidentifiedImageError)"
    if kind == "bomb":
        _png_header_only(p, 30000, 30000)
        return p, f"{BOMB} (Image size (900000000 pixels) exceeds limit of 178956970 pixels"
    raise AssertionError(kind)


KINDS = ["16bit", "32bit_int", "float", "fifo", "char_device", "directory", "missing", "html_as_png", "truncated",
         "empty", "bomb"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_image_is_one_line_naming_the_file_exactly_as_prepare_reports_it(pulled, tmp_path, capsys, kind):
    rel, good = pulled
    bad, problem = make_input(tmp_path, kind)
    with pytest.raises(ImageError) as prepare_err:  # what prepare's decoder says about this very file
        decode(bad, 1, 16)
    assert str(prepare_err.value).startswith(f"{bad}: {problem}")
    code = cli_main(["predict", str(rel), str(bad)])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err == f"edgeopt predict: error: {prepare_err.value}\n"


@pytest.mark.timeout(120)
def test_fifo_through_the_real_cli_never_hangs(pulled, tmp_path):
    rel, good = pulled
    fifo, _ = make_input(tmp_path, "fifo")
    res = run_cli(tmp_path, "predict", str(rel), str(good), str(fifo), timeout=90)  # a blocking open never returns
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [f"edgeopt predict: error: {fifo}: {NOT_REGULAR}"]


def test_fifo_swapped_in_after_the_stat_check_is_refused_on_the_open_descriptor(tmp_path, monkeypatch):
    import edgeopt.images as images

    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(images, "check_regular_file", lambda path: None)  # the race: stat said "regular file"
    with pytest.raises(ImageError, match="late.png: not a regular file"):
        images.decode(fifo, 1, 16)


def test_batch_names_exactly_the_bad_files(pulled, tmp_path, capsys):
    rel, good = pulled
    broken, problem = make_input(tmp_path, "html_as_png")
    code = cli_main(["predict", str(rel), str(good), str(broken), str(good), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err == f"edgeopt predict: error: {broken}: {problem}\n"
    deep, _ = make_input(tmp_path, "16bit")
    code = cli_main(["predict", str(rel), str(good), str(broken), str(deep)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (f"edgeopt predict: error: 2 of 3 images: refused ({broken}: {problem}; {deep}: {HIGH_DEPTH} "
                   f"(mode I;16))\n")
    assert cli_main(["predict", str(rel), str(good), "--json"]) == 0  # the good one alone still works
    assert json.loads(capsys.readouterr().out)["results"][0]["image"] == str(good)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "CMYK", "1", "I;16", "F"])
def test_predict_decodes_every_mode_exactly_as_prepare_does(pulled, tmp_path, mode):
    """Same pixels where prepare accepts the mode, the same refusal where it does not."""
    rel, _ = pulled
    contract = json.loads((rel / "manifest.json").read_text())["input"]
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "RGB")
    if mode in ("I;16", "F"):
        img = Image.fromarray(rng.integers(0, 65535, (24, 24)).astype(np.uint16 if mode == "I;16" else np.float32))
    else:
        img = base.convert(mode)
    path = tmp_path / f"x.{'tiff' if mode in ('CMYK', 'F') else 'png'}"
    img.save(path)
    try:
        expected = decode(path, 1, 16)
    except ImageError as exc:
        assert exc.kind == HIGH_DEPTH
        with pytest.raises(ImageError) as got:
            load_image(path, contract)
        assert (got.value.kind, str(got.value)) == (exc.kind, str(exc))
        return
    np.testing.assert_array_equal(load_image(path, contract), expected)


@pytest.mark.parametrize("edit, message", [
    ({"resize": {"size": [100000, 100000]}}, "resize.size [100000, 100000] (a square size of 8..512 pixels)"),
    ({"resize": {"size": [16, 8]}}, "resize.size [16, 8]"),
    ({"std": [0.0]}, "mean/std must be 1 finite numbers each, std > 0"),
    ({"mean": ["x"]}, "mean/std must be 1 finite numbers each"),
    ({"channels": 2}, "channels 2 (1 or 3)"),
    ({"layout": "NHWC"}, "layout 'NHWC' (NCHW only)"),
])
def test_crafted_input_contract_refused_before_decoding(pulled, tmp_path, capsys, edit, message):
    rel, good = pulled
    man = rel / "manifest.json"
    doc = json.loads(man.read_text())
    doc["input"].update(edit)
    man.write_text(json.dumps(doc))
    from edgeopt.predict import predict

    with pytest.raises(Exception, match=r"input contract refused: " + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        predict(rel, [good])  # the release itself (verification is the CLI's first step, tested elsewhere)


def test_class_list_that_does_not_match_the_model_is_one_line(pulled, tmp_path):
    rel, good = pulled
    from edgeopt.errors import RegistryError
    from edgeopt.predict import predict

    man = rel / "manifest.json"
    doc = json.loads(man.read_text())
    doc["classes"] = ["a", "b"]
    man.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match=r"model\.onnx: the model outputs \[10\] scores per image but the "
                                            r"manifest lists 2 classes"):
        predict(rel, [good])
    doc["classes"] = "0123456789"
    man.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="'classes' must be a non-empty list of names"):
        predict(rel, [good])


def test_negative_threads_is_a_usage_error(pulled):
    rel, good = pulled
    res = subprocess.run([sys.executable, "-m", "edgeopt.cli", "predict", str(rel), str(good), "--threads", "-1"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2 and "--threads: must be 0..256 (got -1)" in res.stderr
