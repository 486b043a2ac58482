"""Issue 13, class 1: where `registry pull --to DIR` may write. Pull replaces only what it created (a directory
holding its `.edgeopt-pull.json` marker and nothing but the files the marker lists), never writes inside the
registry, never follows a symlinked destination, refuses foreign directories, and leaves readable permissions.
Every refusal leaves the destination byte-identical; every success leaves no hidden temp directory behind."""
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

from edgeopt.cli import main as cli_main
from edgeopt.errors import RegistryError
from edgeopt.io import read_json
from edgeopt.registry import PULL_MARKER, verify_dir
from tests.conftest import REPO


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under root (files with bytes, links with targets, directories), for byte-identical checks."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (f"link->{os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file()
                    else "dir" if p.is_dir() else "other")
    return out


def hidden_leftovers(parent: Path) -> list[str]:
    """Hidden entries besides pull's lock files (kept on purpose: deleting a lock file races with its next user)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".pull.lock"))


def test_a_users_directory_with_a_manifest_is_never_replaced(reg, tmp_path):
    """The issue's case: any directory holding a manifest.json was taken for an earlier pull and replaced whole."""
    mine = tmp_path / "webapp"
    (mine / "src").mkdir(parents=True)
    (mine / "manifest.json").write_text('{"name": "my web app"}')
    (mine / "src" / "index.js").write_text("console.log(1)")
    before = snapshot(mine)
    with pytest.raises(RegistryError, match=r"webapp: not empty and not an earlier pull \(no valid "
                                            r"\.edgeopt-pull\.json\); pull never replaces a directory it did not "
                                            r"create"):
        reg.pull("m@0.0.1", mine)
    assert snapshot(mine) == before and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["release_dir", "model_dir", "new_dir_in_registry", "registry_root",
                                   "holds_registry"])
def test_pull_never_writes_inside_the_registry(reg, tmp_path, where):
    dest = {"release_dir": reg.release_dir("m", "0.0.1"), "model_dir": reg.root / "m",
            "new_dir_in_registry": reg.root / "m" / "copy", "registry_root": reg.root,
            "holds_registry": tmp_path}[where]
    before = snapshot(reg.root)
    with pytest.raises(RegistryError, match=r": (inside|holds) the registry .*; pull to a directory outside it"):
        reg.pull("m@0.0.2", dest)
    assert snapshot(reg.root) == before and reg.verify() == []
    assert not (reg.root / "m" / "copy").exists()


@pytest.mark.parametrize("kind", ["symlink_to_empty_dir", "symlink_into_registry", "dangling_symlink"])
def test_symlinked_destination_refused_and_its_target_untouched(reg, tmp_path, kind):
    target = {"symlink_to_empty_dir": tmp_path / "real", "symlink_into_registry": reg.release_dir("m", "0.0.1"),
              "dangling_symlink": tmp_path / "nowhere"}[kind]
    if kind == "symlink_to_empty_dir":
        target.mkdir()
    link = tmp_path / "rel"
    link.symlink_to(target)
    before = snapshot(reg.root)
    with pytest.raises(RegistryError, match=r"rel: is a symbolic link; pull into a real directory"):
        reg.pull("m@0.0.2", link)
    assert link.is_symlink() and os.readlink(link) == str(target) and snapshot(reg.root) == before
    assert not (tmp_path / "nowhere").exists()
    if kind == "symlink_to_empty_dir":
        assert list(target.iterdir()) == []


def test_file_destination_and_foreign_owner_refused(reg, tmp_path):
    f = tmp_path / "release.txt"
    f.write_text("my notes")
    with pytest.raises(RegistryError, match="exists and is not a directory"):
        reg.pull("m", f)
    assert f.read_text() == "my notes"
    other = tmp_path / "shared"
    other.mkdir()
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    os.chown(other, 54321, 54321)
    with pytest.raises(RegistryError, match=r"shared: owned by another user \(uid 54321\); pull into a directory "
                                            r"you own"):
        reg.pull("m", other)
    assert list(other.iterdir()) == []


def test_an_earlier_pull_is_replaced_only_while_it_holds_nothing_else(reg, tmp_path):
    dest = tmp_path / "deploy" / "rel"
    first = reg.pull("m@0.0.2", dest)  # missing parents are created
    assert first["kept"] is None and verify_dir(dest, pulled=True) == []
    assert sorted(snapshot(dest)) == [PULL_MARKER, "extra", "extra/w.bin", "manifest.json", "model.onnx"]
    # the user adds a file: pulling again would delete it, so it is refused and nothing changes
    (dest / "notes.txt").write_text("calibration notes")
    (dest / "extra" / "mine.cfg").write_text("x")
    before = snapshot(dest)
    with pytest.raises(RegistryError, match=r"rel: holds 2 file\(s\) pull did not create \(extra/mine\.cfg, "
                                            r"notes\.txt\); move them away"):
        reg.pull("m@0.0.1", dest)
    assert snapshot(dest) == before
    (dest / "notes.txt").unlink()
    (dest / "extra" / "mine.cfg").unlink()
    # a tampered copy of an earlier pull is repaired by pulling again; another version replaces it whole
    (dest / "model.onnx").write_bytes(b"tampered")
    assert verify_dir(dest, pulled=True) == [f"{dest}/model.onnx: content changed (sha256 differs from the manifest)"]
    res = reg.pull("m@0.0.1", dest)
    assert res["version"] == "0.0.1" and sorted(snapshot(dest)) == [PULL_MARKER, "manifest.json", "model.onnx"]
    assert (dest / "model.onnx").read_bytes() == b"model one" and verify_dir(dest, pulled=True) == []
    assert read_json(dest / PULL_MARKER)["release"] == "m@0.0.1"
    assert hidden_leftovers(dest.parent) == []


@pytest.mark.parametrize("forgery", ["traversal_in_marker", "symlink_inside", "fifo_inside", "marker_not_json",
                                     "marker_is_a_dir"])
def test_forged_or_polluted_pull_marker_is_not_an_earlier_pull(reg, tmp_path, forgery):
    dest = tmp_path / "rel"
    reg.pull("m@0.0.1", dest)
    marker = dest / PULL_MARKER
    if forgery == "traversal_in_marker":  # an attacker lists files outside, hoping pull deletes them
        doc = read_json(marker)
        doc["files"].append("../victim.txt")
        marker.write_text(json.dumps(doc))
        (tmp_path / "victim.txt").write_text("keep me")
    elif forgery == "symlink_inside":
        (dest / "link").symlink_to(tmp_path)
    elif forgery == "fifo_inside":
        os.mkfifo(dest / "pipe")
    elif forgery == "marker_not_json":
        marker.write_text("{not json")
    else:
        marker.unlink()
        marker.mkdir()
    before = snapshot(dest)
    with pytest.raises(RegistryError, match=r"rel: (not empty and not an earlier pull|holds 1 file\(s\) pull did "
                                            r"not create \((link|pipe)\))"):
        reg.pull("m@0.0.2", dest)
    assert snapshot(dest) == before
    if forgery == "traversal_in_marker":
        assert (tmp_path / "victim.txt").read_text() == "keep me"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_pulled_copy_has_the_users_umask_not_0700(reg, tmp_path, mask):
    old = os.umask(mask)
    try:
        reg.pull("m@0.0.2", tmp_path / "rel")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "rel", *(tmp_path / "rel").rglob("*")]}
    for name, mode in modes.items():
        expect = (0o777 if (tmp_path / name).is_dir() else 0o666) & ~mask
        assert mode == expect, (name, oct(mode), oct(expect))
    # registry releases are read-only, the copy is not: a user can delete their pull
    assert modes["rel/model.onnx"] & stat.S_IWUSR


PULLER = textwrap.dedent("""
    import sys, time
    from edgeopt.errors import RegistryError
    from edgeopt.registry import Registry
    root, dest, start, versions = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split(",")
    time.sleep(max(0.0, start - time.time()))
    for v in versions:
        try:
            print("ok", Registry(root).pull(f"m@{v}", dest)["version"])
        except RegistryError as exc:
            print("refused", exc)
""")


def test_concurrent_pulls_into_one_directory_leave_one_complete_release(reg, tmp_path):
    script = tmp_path / "puller.py"
    script.write_text(PULLER)
    dest = tmp_path / "rel"
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(reg.root), str(dest), str(start), order],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for order in ("0.0.1,0.0.2,0.0.1,0.0.2", "0.0.2,0.0.1,0.0.2,0.0.1")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    lines = [ln for o in outs for ln in o[0].splitlines()]
    assert len(lines) == 8 and all(ln.startswith("ok") for ln in lines), lines
    assert verify_dir(dest, pulled=True) == []
    version = read_json(dest / PULL_MARKER)["version"]
    assert version in ("0.0.1", "0.0.2") and json.loads((dest / "manifest.json").read_text())["version"] == version
    assert hidden_leftovers(tmp_path) == [] and not list(tmp_path.glob("rel.kept-*"))


def test_cli_pull_refusal_is_one_line_and_exit_1(reg, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text("{}")
    code = cli_main(["registry", "pull", "m", "--to", str(mine), "--registry", str(reg.root)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"edgeopt registry: error: {mine}: not empty and not an earlier pull")
    assert (mine / "manifest.json").read_text() == "{}"


def test_very_long_destination_name_is_one_line(reg, tmp_path, capsys):
    dest = tmp_path / ("d" * 300)
    code = cli_main(["registry", "pull", "m", "--to", str(dest), "--registry", str(reg.root)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "File name too long" in err and "Traceback" not in err
    assert hidden_leftovers(tmp_path) == []
