"""Issue 13, beyond the classes: tampering with the registry's own records and manifests, and terminal injection.

registry.json and manifest.json that are truncated, of the wrong shape, with duplicate keys, huge, a FIFO or a
symlink are reported by `verify` (one problem each) and refused by every writer, so a broken record is never
overwritten (that would lose the history); symlinked release or model directories, hard links and unicode
lookalike names are refused or detected; text from manifests and file names reaches the terminal escaped."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgeopt.cli import main as cli_main
from edgeopt.errors import RegistryError
from edgeopt.io import read_json, sha256_file, write_json
from edgeopt.registry import Registry, parse_ref, verify_dir


def writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


RECORD_CASES = {
    "truncated": (lambda p: p.write_text(p.read_text()[:40]), "registry record unreadable"),
    "empty": (lambda p: p.write_bytes(b""), "registry record unreadable"),
    "releases_a_list": (lambda p: p.write_text('{"releases": [], "channels": {}}'),
                        "registry record malformed (expected an object with 'releases' and 'channels' objects)"),
    "top_level_a_list": (lambda p: p.write_text("[]"), "registry record malformed"),
    "duplicate_keys": (lambda p: p.write_text('{"releases": {}, "channels": {}, "releases": {}}'),
                       "registry record unreadable (duplicate key 'releases'"),
    "traversal_version_key": (lambda p: _edit(p, lambda d: d["releases"].update({"../../x": {}})),
                              "registry record malformed (release key '../../x' is not a version)"),
    "history_a_dict": (lambda p: _edit(p, lambda d: d["channels"]["production"].update(history={"version": "0.0.1"})),
                       "registry record malformed (channel production: history must be a list"),
    "history_of_no_release": (lambda p: _edit(p, lambda d: d["channels"]["production"]["history"].append(
        {"version": "9.9.9"})), "registry record malformed (channel production: history names version(s) 9.9.9"),
    "other_models_record": (lambda p: _edit(p, lambda d: d.update(model="other")),
                            "registry record malformed (it is the record of model 'other')"),
    "no_manifest_hash": (lambda p: _edit(p, lambda d: d["releases"]["0.0.1"].pop("manifest_sha256")),
                         "registry record malformed (release 0.0.1: no manifest_sha256)"),
    "fifo": (lambda p: (p.unlink(), os.mkfifo(p)), "registry record unreadable"),
    "huge": (lambda p: p.write_bytes(b" " * (17 << 20) + p.read_bytes()), "more than the 16,777,216 a record may have"),
    "symlink": (lambda p: (p.rename(p.with_name("real.json")), p.symlink_to(p.with_name("real.json"))),
                "registry record is a symbolic link"),
}


def _edit(path: Path, fn) -> None:
    doc = read_json(path)
    fn(doc)
    write_json(path, doc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_damaged_registry_record_is_reported_and_never_overwritten(reg, tmp_path, capsys, case):
    record = reg.root / "m" / "registry.json"
    damage, message = RECORD_CASES[case]
    damage(record)
    before = (os.readlink(record), None) if record.is_symlink() else (None, record.read_bytes()) \
        if record.is_file() else ("fifo", None)
    problems = reg.verify()
    assert len(problems) == 1 and message in problems[0], problems
    assert cli_main(["registry", "verify", "--registry", str(reg.root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
    for action in (lambda: reg.publish("m", {"model.onnx": tmp_path / "src" / "model.onnx"}, {}, version="2.0.0"),
                   lambda: reg.point("m", "staging", "0.0.1"), lambda: reg.rollback("m", "production"),
                   lambda: reg.pull("m", tmp_path / "rel")):
        with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            action()
    for argv in (["list"], ["show", "m"]):
        assert cli_main(["registry", *argv, "--registry", str(reg.root)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    after = (os.readlink(record), None) if record.is_symlink() else (None, record.read_bytes()) \
        if record.is_file() else ("fifo", None)
    assert after == before and not (reg.root / "m" / "2.0.0").exists() and not (tmp_path / "rel").exists()


MANIFEST_CASES = {
    "duplicate_primary": (lambda t: t.replace('"primary": "model.onnx"', '"primary": "model.onnx", "primary": '
                                                                          '"../evil.onnx"'),
                          "manifest unreadable (duplicate key 'primary'"),
    "files_a_list": (lambda t: json.dumps({**json.loads(t), "files": ["model.onnx"]}),
                     "manifest unreadable or without 'files'"),
    "sha_a_number": (lambda t: json.dumps({**json.loads(t), "files": {"model.onnx": {"sha256": 5}}}),
                     "manifest unreadable or without 'files'"),
    "not_json": (lambda t: t[: len(t) // 2], "manifest unreadable ("),
    "deeply_nested": (lambda t: t[:-2] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
                      "manifest unreadable (nested too deeply)"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_damaged_manifest_of_a_pulled_copy_is_one_problem(reg, tmp_path, case):
    rel = tmp_path / "rel"
    reg.pull("m", rel)
    edit, message = MANIFEST_CASES[case]
    (rel / "manifest.json").write_text(edit((rel / "manifest.json").read_text()))
    problems = verify_dir(rel, pulled=True)
    assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["manifest", "model"])
def test_fifo_in_place_of_a_release_file_never_hangs(reg, tmp_path, what):
    rel = tmp_path / "rel"
    reg.pull("m", rel)
    name = "manifest.json" if what == "manifest" else "model.onnx"
    (rel / name).unlink()
    os.mkfifo(rel / name)
    expected = (f"{rel}/manifest.json: manifest missing (or not a regular file)" if what == "manifest"
                else f"{rel}/model.onnx: missing (or not a regular file)")
    assert verify_dir(rel, pulled=True) == [expected]
    with pytest.raises(RegistryError, match="not empty and not an earlier pull|pull did not create"):
        reg.pull("m", rel)  # a FIFO is not a file pull made: refused, not replaced


def test_huge_manifest_refused_without_reading_it_into_memory(reg, tmp_path):
    rel = tmp_path / "rel"
    reg.pull("m", rel)
    with open(rel / "manifest.json", "r+b") as fh:
        fh.truncate(3 << 30)  # 3 GB, sparse: reading it would take seconds and gigabytes
    problems = verify_dir(rel, pulled=True)
    assert problems == [f"{rel}/manifest.json: manifest unreadable ({rel}/manifest.json: 3,221,225,472 bytes, more "
                        f"than the 16,777,216 a record may have)"]


def test_symlinked_release_and_model_directories(reg, tmp_path):
    d = reg.release_dir("m", "0.0.1")
    copy = tmp_path / "copy"
    os.rename(d, copy)
    d.symlink_to(copy)  # identical files, but the release now lives wherever the link points
    assert reg.verify() == [f"{d}: release directory is a symbolic link (replaced?); releases are directories of the "
                            f"registry"]
    # a model directory pointing out of the registry: nothing is written through it
    outside = tmp_path / "outside"
    outside.mkdir()
    (reg.root / "n").symlink_to(outside)
    with pytest.raises(RegistryError, match=r"registry/n: model directory is a symbolic link out of the registry"):
        reg.publish("n", {"model.onnx": tmp_path / "src" / "model.onnx"}, {})
    assert list(outside.iterdir()) == []


def test_hard_links_cannot_change_a_release_unnoticed(reg, tmp_path):
    d = reg.release_dir("m", "0.0.1")
    outside = tmp_path / "innocent.bin"
    os.link(d / "model.onnx", outside)  # one inode, two names: an edit through the outside name
    writable(outside).write_bytes(b"evil")
    assert reg.verify() == [f"{d}/model.onnx: content changed (sha256 differs from the manifest)"]
    # a source that is a hard link is copied, not linked: editing the source later leaves the release intact
    src = tmp_path / "src" / "w.onnx"
    src.write_bytes(b"model two")
    os.link(src, tmp_path / "alias.onnx")
    v = reg.publish("m", {"model.onnx": tmp_path / "alias.onnx"}, {}, version="1.0.0")["version"]
    src.write_bytes(b"changed")
    assert (reg.release_dir("m", v) / "model.onnx").stat().st_nlink == 1
    assert reg.verify("m", v) == []


@pytest.mark.parametrize("ref", ["m@\uff10.\uff10.\uff11", "m@0.0.1\u200b", "m@pr\u043eduction", "m\u2010x@0.0.1",
                                 "\u043c@0.0.1", "m@0.0.1 ", "m@ production"])
def test_unicode_lookalike_references_refused(reg, ref, capsys):
    with pytest.raises(RegistryError, match="refused"):
        parse_ref(ref)
    assert cli_main(["registry", "show", ref, "--registry", str(reg.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err
    assert all(c.isprintable() or c == "\n" for c in err)  # the lookalike is shown escaped, e.g. \u200b


def test_manifest_text_cannot_inject_into_the_terminal(tmp_path, capsys):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"x")
    reg = Registry(tmp_path / "reg")
    evil = {"candidate": "\x1b[2J\x1b[31mHACKED", "runtime": "onnx\rruntime", "created_by": "me",
            "classes": ["cat\n  verified   ok", "\u202edog"], "metrics": ["not", "an", "object"],
            "latency": {"p90_ms": "1\x07"}, "lineage": {"git": "x"}, "input": None, "stages": "abc"}
    reg.publish("m", {"model.onnx": src}, evil)
    for argv, lines in ((["list"], 1), (["show", "m"], 9)):
        assert cli_main(["registry", *argv, "--registry", str(reg.root)]) == 0
        out = capsys.readouterr().out
        assert len(out.splitlines()) == lines, out
        assert all(c.isprintable() for c in out.replace("\n", "")), repr(out)
        assert "\\x1b[2J\\x1b[31mHACKED" in out
    assert cli_main(["registry", "show", "m", "--json", "--registry", str(reg.root)]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["candidate"] == evil["candidate"]  # data kept, escaped
    # a file dropped into the release with a newline and ESC in its name
    d = reg.release_dir("m", "0.0.1")
    (d / "evil\n  all intact\x1b[0m").write_text("x")
    assert cli_main(["registry", "verify", "--registry", str(reg.root)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"  {d}/evil\\n  all intact\\x1b[0m: unexpected file, not in the manifest",
                                "edgeopt registry: error: verification failed: 1 problem(s) (listed above)"]
    assert cli_main(["registry", "show", "m\x1b[31m@0.0.1", "--registry", str(reg.root)]) == 1
    assert "\x1b" not in capsys.readouterr().err


def test_list_survives_a_record_without_optional_fields(reg, capsys):
    record = reg.root / "m" / "registry.json"
    _edit(record, lambda d: [d["releases"]["0.0.1"].pop(k) for k in ("created", "by", "content_sha256")])
    assert cli_main(["registry", "list", "--registry", str(reg.root)]) == 0
    assert capsys.readouterr().out.startswith("m@0.0.1")
    assert sha256_file(record)  # still a file, untouched by list


def test_nan_in_a_manifest_is_written_and_listed_as_strict_json(tmp_path, capsys):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"x")
    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"model.onnx": src}, {"metrics": {"accuracy": float("nan")}, "latency": {"p90_ms": float("inf")}})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    man = json.loads((reg.release_dir("m", "0.0.1") / "manifest.json").read_text(), parse_constant=refuse)
    assert man["metrics"]["accuracy"] is None and man["latency"]["p90_ms"] is None
    assert cli_main(["registry", "list", "--json", "--registry", str(reg.root)]) == 0
    assert json.loads(capsys.readouterr().out, parse_constant=refuse)[0]["accuracy"] is None
