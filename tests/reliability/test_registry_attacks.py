"""Issue 7, item 4: the registry under concurrency and attack. Racing promotions (processes) end with both recorded
or one cleanly refused, never a lost or mixed entry (file lock + atomic rename); names, versions, channels and file
names that try path traversal or odd characters are refused; `verify`, `pull` and channel moves detect a changed
byte in any file and a manifest or record edited after promotion."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.release_helpers import REPO, release_project, release_template  # noqa: F401

from edgeopt.cli import main as cli_main
from edgeopt.errors import RegistryError
from edgeopt.io import read_json, sha256_bytes, sha256_file, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, check_file_name, parse_ref

MODEL = "digits-classifier"


def make_files(tmp_path: Path, tag: str) -> dict[str, Path]:
    d = tmp_path / f"src-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(f"weights {tag}".encode())
    return {"model.onnx": d / "model.onnx"}


# --- concurrency -----------------------------------------------------------------------------------------------
RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgeopt.errors import RegistryError
    from edgeopt.registry import Registry
    root, tag, start, version = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    src = Path(root).parent / f"src-{tag}"
    src.mkdir(exist_ok=True)
    time.sleep(max(0.0, start - time.time()))
    for i in range(4 if version == "auto" else 1):
        (src / "model.onnx").write_bytes(f"{tag}-{i}".encode() * 1000)
        try:
            r = Registry(root).publish("m", {"model.onnx": src / "model.onnx"}, {"candidate": tag},
                                       version=None if version == "auto" else version)
            print("ok", r["version"])
        except RegistryError as exc:
            print("refused", exc)
""")


def race(tmp_path: Path, version: str) -> list[str]:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "reg"), tag, str(start), version],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for tag in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    return [line for o in outs for line in o[0].splitlines()]


def test_racing_promotions_are_all_recorded(tmp_path):
    lines = race(tmp_path, "auto")
    versions = sorted((ln.split()[1] for ln in lines if ln.startswith("ok")),
                      key=lambda v: tuple(map(int, v.split("."))))
    assert len(versions) == 8 and len(set(versions)) == 8, lines
    reg = Registry(tmp_path / "reg")
    assert reg.versions("m") == [f"0.0.{i}" for i in range(1, 9)]
    assert sorted(reg.record("m")["releases"]) == sorted(versions)
    assert reg.verify() == []
    # every release holds exactly the bytes its writer published: nothing mixed
    for v in versions:
        man = reg.manifest("m", v)
        data = (reg.release_dir("m", v) / "model.onnx").read_bytes()
        assert data.startswith(man["candidate"].encode() + b"-") and man["files"]["model.onnx"]["sha256"] == \
            sha256_bytes(data)
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if p.name.startswith(".incoming")]


def test_racing_same_version_one_is_cleanly_refused(tmp_path):
    lines = race(tmp_path, "1.0.0")
    assert sorted(ln.split()[0] for ln in lines) == ["ok", "refused"], lines
    assert "already exists" in next(ln for ln in lines if ln.startswith("refused"))
    reg = Registry(tmp_path / "reg")
    assert reg.versions("m") == ["1.0.0"] and reg.verify() == []
    winner = reg.manifest("m", "1.0.0")["candidate"]
    src = tmp_path / f"src-{winner}" / "model.onnx"
    assert reg.manifest("m", "1.0.0")["files"]["model.onnx"]["sha256"] == sha256_file(src)


def test_racing_cli_promotions_of_two_candidates_both_recorded(release_project):
    """Two `edgeopt promote --candidate ...` processes at once: two releases, both in the channel history."""
    from stages.gate import run as gate

    gate(load_params(release_project / "params.yaml"), Paths(release_project))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = ("finetuned_ov_fp16", "finetuned_ort_int8_dynamic")
    procs = [subprocess.Popen([sys.executable, "-m", "edgeopt.cli", "promote", "--candidate", name, "--allow-regression"],
                              cwd=release_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    reg = Registry(release_project / "registry")
    assert reg.versions(MODEL) == ["0.0.1", "0.0.2"] and reg.verify() == []
    by_version = {v: reg.manifest(MODEL, v)["candidate"] for v in ("0.0.1", "0.0.2")}
    assert sorted(by_version.values()) == sorted(names)
    history = reg.record(MODEL)["channels"]["staging"]["history"]
    assert [h["version"] for h in history] == ["0.0.1", "0.0.2"] and history[1]["from"] == "0.0.1"
    assert reg.manifest(MODEL, "0.0.2")["lineage"]["parent"] == f"{MODEL}@0.0.1"


def test_a_held_lock_makes_a_writer_wait_then_refuse_cleanly(tmp_path):
    holder = Registry(tmp_path / "reg")
    holder.publish("m", make_files(tmp_path, "a"), {})
    with holder.locked():
        t0 = time.perf_counter()
        with pytest.raises(RegistryError, match=r"reg/\.lock: registry busy \(locked by another process for 1 s\); "
                                                r"retry later"):
            Registry(tmp_path / "reg", lock_timeout=1.0).publish("m", make_files(tmp_path, "b"), {})
        assert time.perf_counter() - t0 >= 0.9
        with pytest.raises(RegistryError, match="registry busy"):
            Registry(tmp_path / "reg", lock_timeout=0.2).point("m", "production", "0.0.1")
    assert holder.versions("m") == ["0.0.1"] and holder.record("m")["channels"] == {} and holder.verify() == []
    later = Registry(tmp_path / "reg", lock_timeout=1.0).publish("m", make_files(tmp_path, "b"), {})
    assert later["version"] == "0.0.2"  # once the lock is free, the same write goes through


# --- names -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", "Upper", "a b", "..", "", ".hidden", "-rf", "model\n",
                                 "model\x00x", "modèle", "m" * 65, "a\\b", "~root"])
def test_traversal_and_odd_model_names_refused(tmp_path, bad):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=r"model name .* refused: use 1-64 of a-z 0-9 \. _ -"):
        reg.publish(bad, make_files(tmp_path, "x"), {})
    with pytest.raises(RegistryError, match="refused"):
        parse_ref(f"{bad}@1.0.0")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "abs").exists()
    assert not (tmp_path / "reg").exists() or [p.name for p in (tmp_path / "reg").iterdir()] == []


@pytest.mark.parametrize("bad", ["../1.0.0", "1.0", "1.0.0/../../x", "01.0.0", "1.0.0-rc1", "/1.0.0", "1.0.0\n",
                                 " 1.0.0", "1.0.0.0", "1.0.9999999", "١.٠.٠", "1١.0.0"])
def test_bad_versions_refused(tmp_path, bad):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="refused: use semantic versioning MAJOR.MINOR.PATCH"):
        reg.publish("m", make_files(tmp_path, "x"), {}, version=bad)
    assert reg.versions("m") == [] and not (tmp_path / "reg" / "m").exists()


def test_bad_channels_and_file_names_refused(tmp_path, capsys):
    reg = Registry(tmp_path / "reg")
    v = reg.publish("m", make_files(tmp_path, "x"), {})["version"]
    for channel in ("../prod", "prod/x", "PROD", "", "prod\n", "a" * 33):
        with pytest.raises(RegistryError, match=r"channel .* refused"):
            reg.point("m", channel, v)
    assert reg.record("m")["channels"] == {}
    for name in ("../x.onnx", "/etc/passwd", "a/../../b", "a\\b", "model.onnx\n", ".hidden", "a//b", "x\x00y",
                 "./model.onnx", "dir/", "a/./b"):
        with pytest.raises(RegistryError, match=r"file name .* refused"):
            check_file_name(name)
        with pytest.raises(RegistryError, match=r"file name .* refused"):
            reg.publish("m", {name: tmp_path / "src-x" / "model.onnx"}, {})
    assert reg.versions("m") == ["0.0.1"]
    # a manifest pointing outside its directory is reported, never read
    d = reg.release_dir("m", v)
    (d / "manifest.json").chmod(0o644)
    man = json.loads((d / "manifest.json").read_text())
    man["files"]["../../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (d / "manifest.json").write_text(json.dumps(man))
    assert any("'../../secret' refused" in p for p in reg.verify())
    assert cli_main(["registry", "show", "../evil@1.0.0", "--registry", str(tmp_path / "reg")]) == 1
    err = capsys.readouterr().err
    assert err == "edgeopt registry: error: model name '../evil' refused: use 1-64 of a-z 0-9 . _ - starting with a " \
                  "letter or digit (no '/', '..' or absolute paths)\n"


# --- tampering -------------------------------------------------------------------------------------------------
def _writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


def _flip(path: Path, offset: int) -> None:
    data = bytearray(_writable(path).read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper(reg: Registry, d: Path, kind: str) -> list[str]:
    """Damage release 0.0.1 one way; return the exact problems `verify` must report."""
    record = reg.root / MODEL / "registry.json"
    edited = f"{d}/manifest.json: manifest edited after promotion (sha256 differs from the registry record)"
    if kind in ("model.xml", "model.bin"):
        size = (d / kind).stat().st_size
        _flip(d / kind, size // 2)  # one byte, in the middle of the file
        return [f"{d}/{kind}: content changed (sha256 differs from the manifest)"]
    if kind in ("first_byte", "last_byte"):
        _flip(d / "model.bin", 0 if kind == "first_byte" else -1)
        return [f"{d}/model.bin: content changed (sha256 differs from the manifest)"]
    if kind == "manifest_metrics":
        man = json.loads(_writable(d / "manifest.json").read_text())
        man["metrics"]["accuracy"] = 99.9
        (d / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
        return [edited]
    if kind == "manifest_whitespace":
        _writable(d / "manifest.json").write_text((d / "manifest.json").read_text() + " ")
        return [edited]
    if kind == "file_and_manifest":  # both edited consistently: only the registry record catches it
        _flip(d / "model.bin", 100)
        man = json.loads(_writable(d / "manifest.json").read_text())
        man["files"]["model.bin"]["sha256"] = sha256_file(d / "model.bin")
        (d / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
        return [edited]
    if kind == "deleted":
        _writable(d)
        (d / "model.bin").unlink()
        return [f"{d}/model.bin: missing (or not a regular file)"]
    if kind == "extra_file":
        _writable(d)
        (d / "payload.sh").write_text("rm -rf /")
        return [f"{d}/payload.sh: unexpected file, not in the manifest"]
    if kind == "symlink":
        _writable(d)
        real = reg.root.parent / "elsewhere.bin"
        real.write_bytes((d / "model.bin").read_bytes())  # same bytes, but not a file of the release
        (d / "model.bin").unlink()
        (d / "model.bin").symlink_to(real)
        return [f"{d}/model.bin: missing (or not a regular file)"]
    if kind == "record_edited":
        doc = read_json(record)
        doc["releases"]["0.0.1"]["manifest_sha256"] = "0" * 64
        write_json(record, doc)
        return [edited, f"{MODEL}@staging: history entry for 0.0.1 does not match the release record "
                        f"(registry.json edited?)"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["model.xml", "model.bin", "first_byte", "last_byte", "manifest_metrics",
                                  "manifest_whitespace", "file_and_manifest", "deleted", "extra_file", "symlink",
                                  "record_edited"])
def test_tampered_release_fails_verify_pull_and_channel_moves(release_project, tmp_path, capsys, kind):
    from stages.gate import run as gate
    from stages.promote import run as promote

    params = load_params(release_project / "params.yaml")
    gate(params, Paths(release_project))
    promote(params, Paths(release_project))
    reg = Registry(release_project / "registry")
    d = reg.release_dir(MODEL, "0.0.1")
    assert reg.verify() == []
    reg.pull(f"{MODEL}@staging", tmp_path / "before")  # an intact release pulls
    expected = _tamper(reg, d, kind)

    assert reg.verify() == expected
    with pytest.raises(RegistryError, match=r"digits-classifier@0\.0\.1 fails verification, not pulled"):
        reg.pull(f"{MODEL}@staging", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(RegistryError, match="fails verification, not pointing 'production' at it"):
        reg.point(MODEL, "production", "0.0.1")
    assert "production" not in reg.record(MODEL)["channels"]
    code = cli_main(["registry", "verify", "--registry", str(reg.root)])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == [f"  {p}" for p in expected] + [
        f"edgeopt registry: error: verification failed: {len(expected)} problem(s) (listed above)"]
