"""Share the release registry through the project's DVC remote (S3, GCS, Azure, SSH, a local path, ...).

    edgeopt registry push [--remote NAME]     # releases the remote lacks + the merged record
    edgeopt registry fetch [--remote NAME]    # releases this machine lacks, verified, + the merged record

The registry is not a DVC output (a checkout or an experiment must never rewrite it), so `dvc push` does not
carry it; these two commands do, through the same remote configuration and credentials DVC uses
(`dvc remote add -d ...`), into `<remote>/edgeopt-registry/<model>/...`. Releases are immutable, so merging is
a union; a channel whose history diverged on two machines is a conflict, refused with the channel named
(fetch, then point the channel again). Every release fetched is verified against the record before it
becomes visible; nothing already here is replaced.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.errors import RegistryError
from edgeopt.io import write_json
from edgeopt.registry import MANIFEST, RECORD, Registry, check_name, check_version, verify_dir

REMOTE_DIR = "edgeopt-registry"


def remote_location(project: Path, name: str | None = None):
    """(filesystem, base path) of the DVC remote `name` (default: the project's default remote)."""
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError:
        raise RegistryError("sharing the registry needs DVC (`pip install dvc`, plus e.g. dvc[s3])") from None
    try:
        repo = Repo(str(project))
        remote = repo.cloud.get_remote(name, "registry push")
    except DvcException as exc:
        raise RegistryError(f"{project}: no usable DVC remote ({exc}); add one with "
                            "`dvc remote add -d NAME URL`") from None
    return remote.fs, remote.fs.join(remote.path, REMOTE_DIR)


def _history_key(entry: dict[str, Any]) -> tuple:
    return entry.get("version"), entry.get("time"), entry.get("action"), entry.get("manifest_sha256")


def merge_records(ours: dict[str, Any], theirs: dict[str, Any], model: str) -> dict[str, Any]:
    """Union of releases (a version must carry the same manifest on both sides) and, per channel, the longer
    of two histories one of which extends the other; anything else is a conflict."""
    merged = {**ours, "releases": dict(ours.get("releases") or {}), "channels": {}}
    for version, info in (theirs.get("releases") or {}).items():
        mine = merged["releases"].get(version)
        if mine is not None and mine.get("manifest_sha256") != info.get("manifest_sha256"):
            raise RegistryError(f"{model}@{version} differs between this registry and the remote (two releases under "
                                "one version); versions are never reused, so one of them must be renamed by hand")
        merged["releases"].setdefault(version, info)
    channels = set(ours.get("channels") or {}) | set(theirs.get("channels") or {})
    for ch in sorted(channels):
        a = ((ours.get("channels") or {}).get(ch) or {}).get("history", [])
        b = ((theirs.get("channels") or {}).get(ch) or {}).get("history", [])
        short, long_ = (a, b) if len(a) <= len(b) else (b, a)
        if [_history_key(e) for e in short] != [_history_key(e) for e in long_[:len(short)]]:
            raise RegistryError(f"{model}@{ch}: the channel moved differently here and on the remote; fetch, "
                                "then point the channel again (`edgeopt registry promote MODEL@VERSION --channel "
                                f"{ch}`)")
        merged["channels"][ch] = {"history": list(long_)}
    return merged


def _read_remote_json(fs, path: str) -> dict[str, Any] | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as fh:
        try:
            doc = json.load(fh)
        except ValueError as exc:
            raise RegistryError(f"{path}: the remote registry record is not valid JSON ({exc})") from None
    return doc if isinstance(doc, dict) else None


def _remote_models(fs, base: str) -> list[str]:
    if not fs.exists(base):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base)]
    return sorted(n for n in names if fs.exists(fs.join(base, n, RECORD)))


def push(registry: Registry, fs, base: str) -> dict[str, Any]:
    """Upload the releases the remote lacks (each verified first), then the merged record."""
    done: dict[str, list[str]] = {}
    with registry.locked():
        for model in registry.models():
            ours = registry.record(model)
            theirs = _read_remote_json(fs, fs.join(base, model, RECORD)) or {"releases": {}, "channels": {}}
            merged = merge_records(ours, theirs, model)
            for version in sorted(set(ours["releases"]) - set(theirs.get("releases") or {})):
                problems = registry.verify(model, version)
                if problems:
                    raise RegistryError(f"{model}@{version} fails verification, not pushed: {'; '.join(problems)}")
                src = registry.release_dir(model, version)
                files = list(registry.manifest(model, version)["files"]) + [MANIFEST]  # the manifest last
                for rel in files:
                    fs.put_file(str(src / rel), fs.join(base, model, version, rel))
                done.setdefault(model, []).append(version)
            with tempfile.TemporaryDirectory() as tmp:
                write_json(Path(tmp) / RECORD, merged)
                fs.put_file(str(Path(tmp) / RECORD), fs.join(base, model, RECORD))
    return {"pushed": done, "remote": base}


def fetch(registry: Registry, fs, base: str) -> dict[str, Any]:
    """Download the releases this registry lacks, verify each against the remote record, then merge records."""
    done: dict[str, list[str]] = {}
    with registry.locked():
        for model in _remote_models(fs, base):
            check_name(model)
            theirs = _read_remote_json(fs, fs.join(base, model, RECORD)) or {}
            ours = registry.record(model)
            merged = merge_records(ours, theirs, model)
            local_versions = set(registry.versions(model))
            for version in sorted(set(theirs.get("releases") or {}) - local_versions):
                check_version(version)
                final = registry.release_dir(model, version)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{version}-", dir=final.parent))
                try:
                    tmp.chmod(0o755)
                    fs.get_file(fs.join(base, model, version, MANIFEST), str(tmp / MANIFEST))
                    manifest = json.loads((tmp / MANIFEST).read_text())
                    for rel in manifest.get("files") or {}:
                        target = tmp / rel
                        if tmp.resolve() not in target.resolve().parents:
                            raise RegistryError(f"{model}@{version}: remote manifest names {rel!r} outside the release")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        fs.get_file(fs.join(base, model, version, rel), str(target))
                    problems = verify_dir(tmp, theirs["releases"][version]["manifest_sha256"])
                    if problems:
                        raise RegistryError(f"{model}@{version} from the remote fails verification, not fetched: "
                                            + "; ".join(problems))
                    for f in tmp.rglob("*"):
                        if f.is_file():
                            f.chmod(0o444)
                    tmp.rename(final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                done.setdefault(model, []).append(version)
            write_json(registry.root / model / RECORD, merged)
    return {"fetched": done, "remote": base}
