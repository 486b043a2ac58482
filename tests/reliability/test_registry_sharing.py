"""The registry's seams beyond its own directory: a crafted remote record cannot damage the local one, two
pushes of one version cannot silently replace each other, `verify` and `show` never pass CI on nothing or on a
failed check, a caller's manifest cannot rename a release, and `evaluate-release` checks a pulled manifest the
way `predict` does."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dvc_objects.fs.local import LocalFileSystem

from edgeopt import registry_remote
from edgeopt.cli import main as cli_main
from edgeopt.errors import RegistryError
from edgeopt.io import read_json, sha256_bytes, sha256_file, write_json
from edgeopt.registry import Registry


def remote_with(reg: Registry, tmp_path: Path) -> tuple[LocalFileSystem, str]:
    """A remote (a local folder) holding everything `reg` has."""
    fs, base = LocalFileSystem(), str(tmp_path / "remote" / registry_remote.REMOTE_DIR)
    registry_remote.push(reg, fs, base)
    return fs, base


def each_makes_its_own_0_0_3(reg: Registry, tmp_path: Path, mine: bytes, theirs: bytes
                             ) -> tuple[LocalFileSystem, str, Registry]:
    """A remote holding `reg`, another machine's registry fetched from it; then each publishes its own 0.0.3
    (model.onnx holding `mine` here, `theirs` there). Returns (fs, base, the other registry)."""
    fs, base = remote_with(reg, tmp_path)
    other = Registry(tmp_path / "other")
    registry_remote.fetch(other, fs, base)
    for registry, content in ((reg, mine), (other, theirs)):
        src = tmp_path / "src" / f"{registry.root.name}.onnx"
        src.write_bytes(content)
        registry.publish("m", {"model.onnx": src}, {"primary": "model.onnx"})
    return fs, base, other


CRAFTED_REMOTE = {
    "traversal_channel": lambda d: d["channels"].update({"Prod/../x": {"history": [{"version": "0.0.1"}]}}),
    "v_prefixed_release": lambda d: d["releases"].update({"v1.0.0": dict(d["releases"]["0.0.1"])}),
    "history_of_no_release": lambda d: d["channels"]["production"]["history"].append({"version": "7.0.0"}),
    "entry_not_an_object": lambda d: d["channels"]["production"]["history"].append("0.0.2"),
    "releases_a_list": lambda d: d.update(releases=[]),
}


@pytest.mark.parametrize("case", list(CRAFTED_REMOTE))
def test_a_crafted_remote_record_is_refused_and_the_local_one_kept(reg, tmp_path, case):
    fs, base = remote_with(reg, tmp_path)
    remote_record = Path(base) / "m" / "registry.json"
    doc = read_json(remote_record)
    CRAFTED_REMOTE[case](doc)
    remote_record.write_text(json.dumps(doc))
    here = Registry(tmp_path / "here")
    registry_remote.fetch(here, fs, str(Path(base).with_name("empty")))  # nothing there: a no-op
    mine = reg.root / "m" / "registry.json"
    before = mine.read_bytes()
    for action, target in (("fetch", reg), ("fetch", here), ("push", reg)):
        with pytest.raises(RegistryError, match="malformed|not a version|not releases"):
            getattr(registry_remote, action)(target, fs, base)
    assert mine.read_bytes() == before and reg.verify() == []  # nothing merged, nothing damaged
    assert not (here.root / "m" / "registry.json").exists()
    assert json.loads(remote_record.read_text()) == doc  # push did not spread it either


def test_a_remote_manifest_that_differs_from_the_remote_record_is_not_fetched(reg, tmp_path):
    fs, base = remote_with(reg, tmp_path)
    manifest = Path(base) / "m" / "0.0.2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"two"', '"evil"'))
    here = Registry(tmp_path / "here")
    with pytest.raises(RegistryError, match="remote manifest differs from the remote record"):
        registry_remote.fetch(here, fs, base)
    assert "0.0.2" not in here.versions("m") and not list((here.root / "m").glob(".incoming-*"))


def test_two_machines_pushing_one_version_cannot_replace_each_other(reg, tmp_path):
    """A and B both made their own 0.0.3: the second push is refused, the first one's release stays whole."""
    fs, base, other = each_makes_its_own_0_0_3(reg, tmp_path, b"machine a", b"machine b")
    # A's files are up, its record not yet (B pushes in between): B must not overwrite them
    a_release = Path(base) / "m" / "0.0.3"
    for rel in ("model.onnx", "manifest.json"):
        fs.put_file(str(reg.release_dir("m", "0.0.3") / rel), str(a_release / rel))
    with pytest.raises(RegistryError, match="already holds another release under this version.*unfinished"):
        registry_remote.push(other, fs, base)
    assert (a_release / "model.onnx").read_bytes() == b"machine a"
    # A's push finishes (its files sent again: the same bytes), and B learns of the clash on fetch
    assert registry_remote.push(reg, fs, base)["pushed"] == {"m": ["0.0.3"]}
    with pytest.raises(RegistryError, match="differs between this registry and the remote"):
        registry_remote.fetch(other, fs, base)
    fresh = Registry(tmp_path / "fresh")
    registry_remote.fetch(fresh, fs, base)
    assert (fresh.release_dir("m", "0.0.3") / "model.onnx").read_bytes() == b"machine a" and fresh.verify() == []


@pytest.mark.parametrize("manifest_up", [False, True])
def test_a_push_cut_off_is_sent_whole_again(reg, tmp_path, manifest_up):
    """Killed mid-file, before or after the manifest went up: a manifest on the remote proves nothing about
    the files beside it, so the release is sent again."""
    fs, base = remote_with(reg, tmp_path)
    src = tmp_path / "src"
    (src / "d.onnx").write_bytes(b"four, whole")
    reg.publish("m", {"model.onnx": src / "d.onnx"}, {"primary": "model.onnx"})
    half = Path(base) / "m" / "0.0.3"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"four")
    if manifest_up:
        (half / "manifest.json").write_bytes((reg.release_dir("m", "0.0.3") / "manifest.json").read_bytes())
    assert registry_remote.push(reg, fs, base)["pushed"] == {"m": ["0.0.3"]}
    fresh = Registry(tmp_path / "fresh")
    registry_remote.fetch(fresh, fs, base)
    assert (fresh.release_dir("m", "0.0.3") / "model.onnx").read_bytes() == b"four, whole" and fresh.verify() == []


def test_pull_from_a_deleted_working_directory(reg, tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(RegistryError, match="current directory no longer exists"):
        reg.pull("m@production", "release")
    assert reg.pull("m@production", tmp_path / "abs")["version"] == "0.0.1"  # an absolute --to is fine


def test_a_push_refuses_when_the_remote_record_moved_meanwhile(reg, tmp_path, monkeypatch):
    fs, base = remote_with(reg, tmp_path)
    src = tmp_path / "src"
    (src / "c.onnx").write_bytes(b"three")
    reg.publish("m", {"model.onnx": src / "c.onnx"}, {"primary": "model.onnx"})
    record = Path(base) / "m" / "registry.json"
    real = fs.put_file

    def put_and_race(lpath, rpath, **kw):  # another machine writes the record while our files go up
        real(lpath, rpath, **kw)
        if rpath.endswith("manifest.json"):
            doc = read_json(record)
            doc["channels"]["staging"] = {"history": [dict(doc["channels"]["production"]["history"][0])]}
            record.write_text(json.dumps(doc))

    monkeypatch.setattr(fs, "put_file", put_and_race)
    with pytest.raises(RegistryError, match="remote record changed while pushing"):
        registry_remote.push(reg, fs, base)
    assert "staging" in read_json(record)["channels"] and "0.0.3" not in read_json(record)["releases"]
    monkeypatch.undo()
    assert registry_remote.push(reg, fs, base)["pushed"] == {"m": ["0.0.3"]}  # retried: merged with theirs
    assert {"staging", "production"} <= set(read_json(record)["channels"])


def test_verify_never_passes_on_nothing(tmp_path, reg, capsys):
    assert cli_main(["registry", "verify", "--registry", str(tmp_path / "no-such-dir")]) == 1
    assert "no release to verify" in capsys.readouterr().err
    assert cli_main(["registry", "verify", "--registry", str(tmp_path / "no-such-dir"), "--allow-empty"]) == 0
    assert cli_main(["registry", "verify", "mm", "--registry", str(reg.root)]) == 1  # a typo of "m"
    assert "mm: no such model in the registry" in capsys.readouterr().err
    assert cli_main(["registry", "verify", "m", "--registry", str(reg.root)]) == 0
    assert "2 release(s) verified" in capsys.readouterr().out


def test_show_fails_when_the_release_fails_verification(reg, capsys):
    assert cli_main(["registry", "show", "m@production", "--registry", str(reg.root), "--json"]) == 0
    f = reg.release_dir("m", "0.0.1") / "model.onnx"
    f.chmod(0o644)
    f.write_bytes(b"tampered")
    capsys.readouterr()
    assert cli_main(["registry", "show", "m@production", "--registry", str(reg.root), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verified"] is False


@pytest.mark.parametrize("name, message", [("manifest.json", "written by the registry itself"),
                                           ("manifest.json/model.onnx", "written by the registry itself"),
                                           ("Manifest.JSON", "written by the registry itself")])
def test_a_release_file_cannot_take_a_name_the_registry_writes(reg, tmp_path, name, message):
    src = tmp_path / "f.onnx"
    src.write_bytes(b"x")
    with pytest.raises(RegistryError, match=message):
        reg.publish("m", {name: src}, {})
    assert reg.versions("m") == ["0.0.1", "0.0.2"] and reg.verify() == []


def test_a_callers_manifest_cannot_rename_the_release(reg, tmp_path):
    src = tmp_path / "f.onnx"
    src.write_bytes(b"new")
    res = reg.publish("m", {"model.onnx": src}, {"name": "other", "version": "7.7.7", "created": "1970",
                                                  "primary": "model.onnx", "format": "onnx"})
    manifest = reg.manifest("m", res["version"])
    assert (manifest["name"], manifest["version"], res["version"]) == ("m", "0.0.3", "0.0.3")
    assert manifest["created"] != "1970" and manifest["format"] == "onnx"  # the model's format: the caller's


def test_verify_catches_a_manifest_naming_another_release(reg):
    """Edited with its hash updated in the record (someone with write access): it still says what it is."""
    d = reg.release_dir("m", "0.0.2")
    mpath = d / "manifest.json"
    mpath.chmod(0o644)
    mpath.write_text(mpath.read_text().replace('"version": "0.0.2"', '"version": "0.0.1"'))
    record_path = reg.root / "m" / "registry.json"
    record = read_json(record_path)
    record["releases"]["0.0.2"]["manifest_sha256"] = sha256_file(mpath)
    write_json(record_path, record)
    assert any("says it is 'm'@'0.0.1', not m@0.0.2" in p for p in reg.verify())


def test_a_pulled_copy_must_say_it_is_the_release_pulled(reg, tmp_path):
    from edgeopt.registry import PULL_MARKER, verify_dir

    d = tmp_path / "release"
    reg.pull("m@0.0.2", d)
    assert verify_dir(d, pulled=True) == []
    marker = read_json(d / PULL_MARKER)
    marker["model"], marker["version"] = "m", "0.0.1"  # a marker re-pointed by hand (hash kept consistent)
    (d / PULL_MARKER).write_text(json.dumps(marker))
    assert any("says it is 'm'@'0.0.2'" in p for p in verify_dir(d, pulled=True))


def test_pull_into_the_current_directory_is_refused_with_what_to_do(reg, tmp_path, monkeypatch):
    """pull replaces its destination in one rename: into "." the shell would be left in a deleted directory."""
    here = tmp_path / "device"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here / "sub")
    for dest in (".", "..", str(here)):
        with pytest.raises(RegistryError, match="pull into a new directory instead"):
            reg.pull("m@production", dest)
    assert sorted(os.listdir(here)) == ["sub"] and Path.cwd() == here / "sub"
    assert reg.pull("m@production", "release")["path"] == here / "sub" / "release"  # relative: fine
    assert (here / "sub" / "release" / "model.onnx").read_bytes() == b"model one"


def _crafted_pulled_dir(tmp_path: Path, **manifest) -> Path:
    d = tmp_path / "pulled"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"not really a model")
    doc = {"name": "m", "version": "0.0.1", "primary": "model.onnx", "runtime": "onnxruntime", "classes": ["a", "b"],
           "files": {"model.onnx": {"sha256": sha256_bytes(b"not really a model")}},
           "input": {"channels": 3, "resize": {"size": [32, 32]}, "mean": [0.5] * 3, "std": [0.25] * 3,
                     "layout": "NCHW"}}
    doc.update(manifest)
    (d / "manifest.json").write_text(json.dumps(doc))
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.parametrize("field, value, message", [
    ("input", {"channels": 3, "resize": {"size": [400000, 400000]}, "mean": [0.5] * 3, "std": [0.25] * 3},
     "input contract refused: resize.size"),
    ("input", {"channels": 3, "resize": {"size": [32, 32]}, "mean": [0.5] * 3, "std": [0.0] * 3},
     "input contract refused: mean/std"),
    ("primary", "../outside.onnx", "primary file '../outside.onnx'"),
    ("name", "../../../../escape", "pass --out DIR"),
    ("version", "x/../../elsewhere", "pass --out DIR"),
])
def test_evaluate_release_checks_a_pulled_manifest_like_predict(tmp_path, monkeypatch, capsys, field, value, message):
    d = _crafted_pulled_dir(tmp_path, **{field: value})
    monkeypatch.chdir(tmp_path)
    code = cli_main(["evaluate-release", str(d), str(tmp_path / "data")])
    assert code not in (0, None) and message in capsys.readouterr().err
    assert not (tmp_path / "release-eval").exists()
    where = [tmp_path / "elsewhere", *(p / n for p in tmp_path.parents[:3] for n in ("escape", "escape-0.0.1"))]
    assert not any(p.exists() for p in where)  # wherever release-eval/<name>-<version> with '..' would lead
    assert sorted(os.listdir(d)) == ["manifest.json", "model.onnx"]


def test_a_manifest_listing_no_files_verifies_nothing_so_fails(tmp_path, reg):
    from edgeopt.registry import verify_dir

    d = tmp_path / "empty-release"
    d.mkdir()
    (d / "manifest.json").write_text('{"files": {}}')
    assert any("lists no files" in p for p in verify_dir(d, pulled=True))
    assert cli_main(["registry", "verify", "--dir", str(d)]) == 1
    with pytest.raises(RegistryError, match="at least one file"):
        reg.publish("m", {}, {})


def test_device_bench_that_timed_nothing_fails(tmp_path, capsys):
    cands = tmp_path / "candidates.json"
    cands.write_text(json.dumps({"candidates": []}))
    assert cli_main(["bench", "--candidates", str(cands), "--out", str(tmp_path / "out.json")]) == 1
    assert "nothing was timed" in capsys.readouterr().err


# --- a remote can only add what it really holds, under the names it records ---------------------------------

def _edit_remote_record(base: str, edit) -> None:
    path = Path(base) / "m" / "registry.json"
    doc = read_json(path)
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("case", ["history_hash_wrong", "history_hash_missing"])
def test_a_remote_history_entry_must_name_its_releases_manifest(reg, tmp_path, case):
    """Histories only grow: a bad entry merged in could never be removed, and `verify` would fail for good."""
    fs, base = remote_with(reg, tmp_path)
    entry = {"version": "0.0.2", "time": "2026-01-01T00:00:00Z", "action": "promote", "from": "0.0.1"}
    if case == "history_hash_wrong":
        entry["manifest_sha256"] = "0" * 64
    _edit_remote_record(base, lambda d: d["channels"]["production"]["history"].append(entry))
    before = (reg.root / "m" / "registry.json").read_bytes()
    here = Registry(tmp_path / "here")
    for target in (reg, here):
        with pytest.raises(RegistryError, match="do not name that release's manifest"):
            registry_remote.fetch(target, fs, base)
    assert (reg.root / "m" / "registry.json").read_bytes() == before and reg.verify() == []
    assert here.versions("m") == []


def test_a_remote_release_whose_manifest_names_another_release_is_not_fetched(reg, tmp_path):
    """The remote record agrees with the manifest's hash, but the manifest says it is m@0.0.1."""
    fs, base = remote_with(reg, tmp_path)
    mpath = Path(base) / "m" / "0.0.2" / "manifest.json"
    mpath.write_text(mpath.read_text().replace('"version": "0.0.2"', '"version": "0.0.1"'))
    _edit_remote_record(base, lambda d: d["releases"]["0.0.2"].update(manifest_sha256=sha256_file(mpath)))
    here = Registry(tmp_path / "here")
    with pytest.raises(RegistryError, match="says it is 'm'@'0.0.1', not m@0.0.2"):
        registry_remote.fetch(here, fs, base)
    assert here.versions("m") == [] and not (here.root / "m" / "registry.json").exists()


def test_fetch_never_adopts_a_different_unrecorded_release_directory(reg, tmp_path):
    """A promotion cut off here left 0.0.3 on disk, unrecorded; the remote's 0.0.3 is another release."""
    fs, base, other = each_makes_its_own_0_0_3(reg, tmp_path, b"local three", b"remote three")
    registry_remote.push(other, fs, base)
    record = reg.root / "m" / "registry.json"
    doc = read_json(record)
    del doc["releases"]["0.0.3"]  # as if killed between the release's rename and its record write
    write_json(record, doc)
    orphan = reg.release_dir("m", "0.0.3")
    with pytest.raises(RegistryError, match="never recorded.*not the remote's m@0.0.3"):
        registry_remote.fetch(reg, fs, base)
    assert (orphan / "model.onnx").read_bytes() == b"local three" and "0.0.3" not in reg.record("m")["releases"]
    # the same release, cut off after its files were in place: adopted, and it verifies
    import shutil
    orphan.chmod(0o755)
    shutil.rmtree(orphan)
    shutil.copytree(other.release_dir("m", "0.0.3"), orphan)
    res = registry_remote.fetch(reg, fs, base)
    assert res["fetched"] == {} and res["adopted"] == {"m": ["0.0.3"]}  # said, not silently recorded
    assert "0.0.3" in reg.record("m")["releases"] and reg.verify() == []


def test_one_refused_model_does_not_stop_the_others_and_fetch_still_fails(reg, tmp_path):
    """A team registry with several models: one bad remote release must not keep the good models from a
    device's fetch, and CI must still see the failure (an error naming the refused model, and what came)."""
    src = tmp_path / "src"
    for model in ("a-cam", "z-gateway"):
        (src / f"{model}.onnx").write_bytes(model.encode())
        reg.publish(model, {"model.onnx": src / f"{model}.onnx"}, {"primary": "model.onnx"})
    fs, base = remote_with(reg, tmp_path)
    manifest = Path(base) / "m" / "0.0.2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"two"', '"evil"'))
    here = Registry(tmp_path / "here")
    with pytest.raises(RegistryError, match=r"^m@0.0.2: the remote manifest differs.*\(the other models were "
                                            r"fetched: a-cam@0.0.1, z-gateway@0.0.1\)$"):
        registry_remote.fetch(here, fs, base)
    assert here.models() == ["a-cam", "z-gateway"] and here.verify() == []
    assert here.versions("m") == [] and not (here.root / "m" / "registry.json").exists()
    # the remote failing for one model (a file unreadable there): the same, with the error named
    (Path(base) / "a-cam" / "0.0.1" / "model.onnx").unlink()
    with pytest.raises(RegistryError, match=r"a-cam: FileNotFoundError: .*m@0.0.2: the remote manifest differs"):
        registry_remote.fetch(Registry(tmp_path / "there"), fs, base)
    assert Registry(tmp_path / "there").models() == ["z-gateway"]


def test_pulling_again_keeps_a_file_edited_since_the_last_pull(reg, tmp_path):
    d = tmp_path / "device" / "release"
    reg.pull("m@0.0.1", d)
    (d / "model.onnx").chmod(0o644)
    (d / "model.onnx").write_bytes(b"patched on the device")
    res = reg.pull("m@0.0.2", d)
    assert res["kept"] and (Path(res["kept"]) / "model.onnx").read_bytes() == b"patched on the device"
    assert (d / "model.onnx").read_bytes() == b"model two" and verify_dir_pulled(d) == []
    again = reg.pull("m@0.0.1", d)  # an untouched pull is simply replaced
    assert again["kept"] is None and (d / "model.onnx").read_bytes() == b"model one"


def test_a_pull_killed_while_sorting_out_the_earlier_one_still_keeps_an_edited_file(reg, tmp_path, monkeypatch):
    """Killed after the swap, while telling edited files from pulled ones: the edited file is not left under a
    temp name, which the next pull would remove as a dead writer's leftover."""
    from edgeopt import registry as registry_module

    d = tmp_path / "device" / "release"
    reg.pull("m@0.0.1", d)
    (d / "model.onnx").chmod(0o644)
    (d / "model.onnx").write_bytes(b"patched on the device")

    def killed(path):
        raise KeyboardInterrupt

    real_install = Registry._install

    def install_then_kill(self, stage, dest):  # the new copy is in place: the next hash is the earlier pull's
        old = real_install(self, stage, dest)
        monkeypatch.setattr(registry_module, "sha256_file", killed)
        return old

    monkeypatch.setattr(Registry, "_install", install_then_kill)
    with pytest.raises(KeyboardInterrupt):
        reg.pull("m@0.0.1", d)
    monkeypatch.undo()
    kept = [p / "model.onnx" for p in d.parent.iterdir() if ".kept-" in p.name]
    assert [p.read_bytes() for p in kept if p.is_file()] == [b"patched on the device"]
    assert (d / "model.onnx").read_bytes() == b"model one" and verify_dir_pulled(d) == []


def verify_dir_pulled(d: Path) -> list[str]:
    from edgeopt.registry import verify_dir
    return verify_dir(d, pulled=True)


def test_a_damaged_pull_marker_fails_verification(reg, tmp_path, capsys):
    d = tmp_path / "release"
    reg.pull("m@0.0.2", d)
    (d / ".edgeopt-pull.json").write_text('{"format": "x", "files": "x"}')
    assert any("damaged" in p for p in verify_dir_pulled(d))
    assert cli_main(["registry", "verify", "--dir", str(d)]) == 1


def test_release_file_names_that_differ_only_in_case_are_refused(reg, tmp_path):
    src = tmp_path / "f.onnx"
    src.write_bytes(b"x")
    with pytest.raises(RegistryError, match="differ only in case"):
        reg.publish("m", {"model.onnx": src, "Model.onnx": src}, {})
    with pytest.raises(RegistryError, match="'Sub' and 'sub' refused: they differ only in case"):
        reg.publish("m", {"Sub/a.bin": src, "sub/b.bin": src}, {})
    with pytest.raises(RegistryError, match="differ only in case"):
        reg.publish("m", {"model": src, "Model/x.bin": src}, {})
    assert reg.versions("m") == ["0.0.1", "0.0.2"]
