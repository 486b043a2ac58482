"""Issue 13, class 5: interrupted and partial states, a full or read-only disk, permissions.

- a first promotion killed between publishing its release directory and writing registry.json is found by
  `registry verify` (the model had no record yet, so it used to be invisible: "0 releases, all intact");
- temp files of a writer that was killed are removed by the next successful write of the same target (a live
  writer's are kept);
- a full disk, a quota, a read-only mount or a permission error anywhere ends with one line and exit 1, the previous
  outputs intact and no temp file left; a release whose record cannot be written is rolled back;
- files and directories get the user's umask (mkstemp/mkdtemp made them 0600/0700).
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.release_helpers import REPO, release_project, release_template, run_cli  # noqa: F401

from edgeopt.cli import main as cli_main
from edgeopt.io import atomic_dir, atomic_write_bytes, umask, write_json
from edgeopt.registry import Registry


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- interrupted first promotion -------------------------------------------------------------------------------
KILL_BEFORE_RECORD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import edgeopt.registry as reg
    root, src = Path(sys.argv[1]), Path(sys.argv[2])
    reg.write_json = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # dies right before the record is written
    reg.Registry(root).publish("m", {"model.onnx": src}, {"candidate": "first"})
""")


def test_first_promotion_killed_before_its_record_is_found_by_verify(tmp_path, capsys):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights")
    script = tmp_path / "kill.py"
    script.write_text(KILL_BEFORE_RECORD)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "reg"), str(src)],
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    reg = Registry(tmp_path / "reg")
    assert (tmp_path / "reg" / "m" / "0.0.1" / "manifest.json").is_file()
    assert not (tmp_path / "reg" / "m" / "registry.json").exists()
    orphan = f"{tmp_path}/reg/m/0.0.1: release directory not in the registry record (interrupted promotion?); remove it"
    assert reg.models() == ["m"] and reg.verify() == [orphan]
    code = cli_main(["registry", "verify", "--registry", str(tmp_path / "reg")])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == [f"  {orphan}",
                                              "edgeopt registry: error: verification failed: 1 problem(s) (listed above)"]
    assert cli_main(["registry", "list", "--registry", str(tmp_path / "reg")]) == 0  # lists nothing, no traceback
    # the rerun completes; the orphan's version is never reused
    assert reg.publish("m", {"model.onnx": src}, {"candidate": "again"})["version"] == "0.0.2"
    assert reg.verify() == [orphan]


def test_record_that_cannot_be_written_rolls_the_release_back(tmp_path, monkeypatch):
    import edgeopt.registry as registry_module

    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights")
    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"model.onnx": src}, {})
    src.write_bytes(b"new weights")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(registry_module, "write_json", full)
    with pytest.raises(OSError, match="No space left on device"):
        reg.publish("m", {"model.onnx": src}, {})
    monkeypatch.undo()
    assert reg.versions("m") == ["0.0.1"] and reg.verify() == [] and hidden(tmp_path / "reg" / "m") == []


# --- temp files of killed writers -----------------------------------------------------------------------------
KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    import edgeopt.io as eio
    eio.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed with the temp file complete
    eio.write_json(sys.argv[1], {"half": "written"})
""")


def test_temp_file_of_a_killed_stage_is_gone_after_the_next_successful_run(release_project):
    root = release_project
    assert run_cli(root, "gate").returncode == 0
    before = (root / "reports" / "gate.json").read_bytes()
    script = root / "kill.py"
    script.write_text(KILL_AT_RENAME)
    proc = subprocess.run([sys.executable, str(script), str(root / "reports" / "gate.json")],
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    leftovers = [n for n in hidden(root / "reports") if n.startswith(".gate.json.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # what a killed stage leaves
    assert (root / "reports" / "gate.json").read_bytes() == before  # the final name is intact
    assert run_cli(root, "gate").returncode == 0
    assert hidden(root / "reports") == [] and hidden(root / "metrics") == []


def test_only_dead_writers_temp_siblings_of_the_same_target_are_removed(tmp_path):
    target = tmp_path / "gate.json"
    dead = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {f".gate.json.{dead}-abc123.tmp": "removed", ".gate.json.k2j4h5g6.tmp": "removed",  # dead, legacy
                 f".gate.json.old-{dead}": "removed",
                 f".gate.json.{sleeper.pid}-xyz.tmp": "kept",  # a live writer's: removing it would break its write
                 f".gate.json.bak.{dead}-abc.tmp": "kept",  # the temp file of another target (gate.json.bak)
                 f".other.json.{dead}-abc.tmp": "kept", "notes.txt": "kept"}
        for n in names:
            (tmp_path / n).write_text("x")
        write_json(target, {"ok": True})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [n for n, what in names.items() if what == "kept"] + ["gate.json"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_dir_and_pull_clean_a_dead_writers_temp_dirs(tmp_path):
    dead = dead_pid()
    for n in (f".prepared.{dead}-q1w2e3.tmp", f".prepared.old-{dead}", f".rel.{dead}-a1b2.tmp"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "images.npy").write_bytes(b"partial")
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert hidden(tmp_path) == [f".rel.{dead}-a1b2.tmp"]
    src = tmp_path / "model.onnx"
    src.write_bytes(b"w")
    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"model.onnx": src}, {})
    reg.pull("m", tmp_path / "rel")
    assert [n for n in hidden(tmp_path) if not n.endswith(".pull.lock")] == []


# --- full disk, read-only file system, permissions -------------------------------------------------------------
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device; disk full: free space and rerun"),
                                         (errno.EDQUOT, "Disk quota exceeded; disk quota exceeded"),
                                         (errno.EROFS, "Read-only file system; read-only file system"),
                                         (errno.EACCES, "Permission denied; permission denied: check the ownership"),
                                         (errno.EIO, "Input/output error; I/O error")])
def test_failed_write_is_one_line_exit_1_and_keeps_the_previous_output(release_project, monkeypatch, capsys, code,
                                                                      words):
    import edgeopt.io as eio

    root = release_project
    monkeypatch.chdir(root)
    assert cli_main(["gate"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (root / "reports" / "gate.json", root / "metrics" / "gate.json")}
    real_fsync = eio.os.fsync

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(eio.os, "fsync", failing_fsync)
    rc = cli_main(["gate", "--set", "gate.max_latency_ms=4"])
    monkeypatch.setattr(eio.os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"edgeopt gate: error: reports/gate.json: {words}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before
    assert hidden(root / "reports") == [] and hidden(root / "metrics") == []


def test_os_error_wrapped_by_a_library_is_still_one_line(release_project, monkeypatch, capsys):
    import stages.gate

    def wrapped(*_a, **_k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "models/exported/x.bin")
        except OSError as exc:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from exc
    monkeypatch.chdir(release_project)
    monkeypatch.setattr(stages.gate, "run", wrapped)
    assert cli_main(["gate"]) == 1
    assert capsys.readouterr().err == ("edgeopt gate: error: models/exported/x.bin: No space left on device; disk "
                                       "full: free space and rerun (atomic writes: outputs already in place were not "
                                       "touched)\n")


def _unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_unshare = pytest.mark.skipif(not _unshare_available(), reason="needs `unshare -rm` (user + mount namespaces)")


@needs_unshare
def test_real_full_disk_gate_and_pull_one_line_nothing_half_written(release_project, tmp_path):
    """A real ENOSPC: reports/ and the pull destination on a 64 KiB tmpfs that is already full."""
    root = release_project
    assert run_cli(root, "gate").returncode == 0 and run_cli(root, "promote").returncode == 0
    full = tmp_path / "full"
    full.mkdir()
    py, env = sys.executable, {**os.environ, "PYTHONPATH": str(REPO)}
    script = f"""
        set -u
        mount -t tmpfs -o size=64k tmpfs {root}/reports && mount -t tmpfs -o size=64k tmpfs {full} || exit 99
        dd if=/dev/zero of={root}/reports/fill bs=4k count=100 2>/dev/null
        dd if=/dev/zero of={full}/fill bs=4k count=100 2>/dev/null
        cd {root}
        {py} -m edgeopt.cli gate; echo "gate rc=$?"
        {py} -m edgeopt.cli registry pull digits-classifier --to {full}/rel; echo "pull rc=$?"
        echo "reports: $(ls -A {root}/reports | sort | tr '\\n' ' ')"
        echo "full: $(ls -A {full} | sort | tr '\\n' ' ')"
    """
    res = subprocess.run(["unshare", "-rm", "sh", "-c", textwrap.dedent(script)], capture_output=True, text=True,
                         env=env, timeout=300)
    out, err = res.stdout.splitlines(), res.stderr.splitlines()
    assert "gate rc=1" in out and "pull rc=1" in out, (res.stdout, res.stderr)
    listed = {ln.split(":")[0]: set(ln.split(":", 1)[1].split()) for ln in out if ln.startswith(("reports:", "full:"))}
    assert listed == {"reports": {"fill"}, "full": {"fill", ".rel.pull.lock"}}, out  # no temp file, no partial copy
    assert [ln for ln in err if ln.startswith("edgeopt ")] == [
        "edgeopt gate: error: reports/gate.json: No space left on device; disk full: free space and rerun "
        "(atomic writes: outputs already in place were not touched)",
        f"edgeopt registry: error: {full}/rel: No space left on device; disk full: free space and rerun (atomic "
        "writes: outputs already in place were not touched)"], res.stderr
    assert "Traceback" not in res.stderr


@needs_unshare
def test_real_read_only_metrics_dir_is_one_line(release_project):
    root = release_project
    script = (f"mount --bind {root}/metrics {root}/metrics && mount -o remount,bind,ro {root}/metrics || exit 99; "
              f"cd {root} && {sys.executable} -m edgeopt.cli gate >/dev/null")
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines()[-1] == ("edgeopt gate: error: metrics/gate.json: Read-only file system; read-only "
                                           "file system: write to a writable location (e.g. --root, registry.root)")
    assert "Traceback" not in res.stderr and hidden(root / "metrics") == []


# --- permissions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_and_dirs_get_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "metrics" / "x.json", {"a": 1})
        atomic_write_bytes(tmp_path / "models" / "m.pt", b"weights")
        with atomic_dir(tmp_path / "prepared") as d:
            (d / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    for f in (tmp_path / "metrics" / "x.json", tmp_path / "models" / "m.pt"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, (f, oct(f.stat().st_mode))
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o777 & ~mask


def test_stage_outputs_are_readable_by_the_group_and_others(release_project):
    root = release_project
    assert run_cli(root, "gate").returncode == 0
    for f in (root / "reports" / "gate.json", root / "metrics" / "gate.json"):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == 0o666 & ~umask(), oct(mode)  # the umask of the test run (was 0o600 from mkstemp)
