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

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.errors import JSONFileError, RegistryError
from edgeopt.io import loads_strict, sha256_bytes, write_json
from edgeopt.registry import (MANIFEST, MAX_RECORD_BYTES, RECORD, Registry, check_name, check_record,
                              check_release_file, read_manifest, verify_dir)

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
    if not isinstance(theirs.get("releases", {}), dict) or not isinstance(theirs.get("channels", {}), dict):
        raise RegistryError(f"{model}: the remote record is malformed (releases and channels must be objects)")
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
    try:
        return check_record(merged, model, Path(f"{model}/{RECORD}"), shared=True)
    except RegistryError as exc:  # the remote's was checked: this registry's history is wrong (`verify` says)
        raise RegistryError(f"{model}: merging this registry's record with the remote's gave a malformed one "
                            f"({exc}); nothing was written. Run `edgeopt registry verify`") from None


def _read_remote_bytes(fs, path: str) -> bytes | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        raw = fh.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise RegistryError(f"{path}: larger than {MAX_RECORD_BYTES} bytes; not a registry file")
    return raw


def _read_remote_record(fs, path: str, model: str) -> dict[str, Any] | None:
    return _parse_remote_record(_read_remote_bytes(fs, path), path, model)


def _parse_remote_record(raw: bytes | None, path: str, model: str) -> dict[str, Any] | None:
    """The remote record of `model`, checked like a local one: a crafted or damaged remote record is refused
    before anything is merged, so it can never replace a good record here (or be pushed back)."""
    if raw is None:
        return None
    try:
        doc = loads_strict(raw)
    except JSONFileError as exc:
        raise RegistryError(f"{path}: the remote registry record is not valid JSON ({exc}); repair it on the "
                            "remote (or push from a machine with a good record)") from None
    return check_record(doc, model, path, shared=True)  # type: ignore[arg-type]  # a remote path, named


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
            record_path = fs.join(base, model, RECORD)
            before = _read_remote_bytes(fs, record_path)  # one read: what is merged is what is compared below
            theirs = _parse_remote_record(before, record_path, model) or {"releases": {}, "channels": {}}
            merged = merge_records(ours, theirs, model)
            for version in sorted(set(ours["releases"]) - set(theirs["releases"])):
                problems = registry.verify(model, version)
                if problems:
                    raise RegistryError(f"{model}@{version} fails verification, not pushed: {'; '.join(problems)}")
                sha = ours["releases"][version]["manifest_sha256"]
                remote_manifest = fs.join(base, model, version, MANIFEST)
                there = _read_remote_bytes(fs, remote_manifest)
                # the same manifest there: an earlier push was cut off after it. Its files are uploaded again
                # all the same (same bytes): a manifest proves nothing about the files beside it on the remote
                if there is not None and sha256_bytes(there) != sha:
                    raise RegistryError(f"{model}@{version}: the remote already holds another release under this "
                                        "version, not yet in its record (another machine's push of it is unfinished "
                                        "or running now). Two releases under one version: once that push is done, "
                                        "`fetch` names the clash; versions are never reused, so one of the two "
                                        "must be renamed by hand (nothing was uploaded)")
                src = registry.release_dir(model, version)
                files = list(registry.manifest(model, version)["files"]) + [MANIFEST]  # the manifest last
                for rel in files:
                    fs.put_file(str(src / rel), fs.join(base, model, version, rel))
                if sha256_bytes(_read_remote_bytes(fs, remote_manifest) or b"") != sha:
                    raise RegistryError(f"{model}@{version}: another push wrote this version on the remote at the "
                                        "same time: two releases under one version; rename one of them by hand")
                done.setdefault(model, []).append(version)
            # compare-and-swap, as far as a plain remote allows: the record we merged with must still be there
            if _read_remote_bytes(fs, record_path) != before:
                raise RegistryError(f"{model}: the remote record changed while pushing (another push at the same "
                                    "time?); run push again (its releases are uploaded again, the same bytes)")
            with tempfile.TemporaryDirectory() as tmp:
                write_json(Path(tmp) / RECORD, merged)
                fs.put_file(str(Path(tmp) / RECORD), record_path)
    return {"pushed": done, "remote": base}


def fetch(registry: Registry, fs, base: str) -> dict[str, Any]:
    """Download the releases this registry lacks, verify each against the remote record, then merge records.
    A model's releases become visible together, with its record: one that fails leaves none of them here. A model
    refused (a bad release, a diverged channel) does not stop the others; RegistryError at the end names each
    refused model and why, and what was fetched meanwhile."""
    done: dict[str, list[str]] = {}
    adopted: dict[str, list[str]] = {}
    refused: dict[str, str] = {}
    with registry.locked():
        for model in _remote_models(fs, base):
            try:
                check_name(model)
                got, kept = _fetch_model(registry, fs, base, model)
            except (RegistryError, OSError) as exc:  # OSError: the remote or the disk failed for this model
                why = str(exc) if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
                refused[model] = why if why.startswith((f"{model}@", f"{model}:")) else f"{model}: {why}"
                continue
            if got:
                done[model] = got
            if kept:
                adopted[model] = kept
    if refused:
        got = [f"{m}@{v}" for m, vs in done.items() for v in vs] + [f"{m}@{v}" for m, vs in adopted.items() for v in vs]
        raise RegistryError("; ".join(refused.values())
                            + (f" (the other models were fetched: {', '.join(got)})" if got else ""))
    return {"fetched": done, "adopted": adopted, "remote": base}


def _fetch_model(registry: Registry, fs, base: str, model: str) -> tuple[list[str], list[str]]:
    """One model's missing releases and merged record; (versions downloaded, versions adopted: found on disk
    unrecorded, the very release the remote records)."""
    theirs = _read_remote_record(fs, fs.join(base, model, RECORD), model) or {"releases": {}, "channels": {}}
    ours = registry.record(model)
    merged = merge_records(ours, theirs, model)
    staged: list[tuple[Path, Path]] = []
    got, kept = [], []
    try:
        for version in sorted(set(theirs["releases"]) - set(ours["releases"])):
            final = registry.release_dir(model, version)
            sha = theirs["releases"][version]["manifest_sha256"]
            if final.exists() or final.is_symlink():  # on disk, not in our record: a promotion cut off
                if final.is_symlink() or verify_dir(final, sha, release=(model, version)):
                    raise RegistryError(f"{final}: a release directory this registry never recorded (a "
                                        f"promotion cut off), and not the remote's {model}@{version}; "
                                        "remove it (`edgeopt registry verify` names it), then fetch again")
                kept.append(version)  # the very release the remote records: the merged record adopts it
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{version}-", dir=final.parent))
            staged.append((tmp, final))
            _download(fs, fs.join(base, model, version), tmp, sha, model, version)
        for tmp, final in staged:
            tmp.rename(final)
            got.append(final.name)
    finally:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)  # (gone once renamed)
    write_json(registry.root / model / RECORD, merged)
    return got, kept


def _download(fs, remote_dir: str, tmp: Path, sha: str, model: str, version: str) -> None:
    """One release from the remote into `tmp`, verified against the remote record's manifest hash."""
    tmp.chmod(0o755)
    raw = _read_remote_bytes(fs, fs.join(remote_dir, MANIFEST)) or b""  # size-capped
    if sha256_bytes(raw) != sha:
        raise RegistryError(f"{model}@{version}: the remote manifest differs from the remote record (or is missing); "
                            "not fetched")
    (tmp / MANIFEST).write_bytes(raw)
    for rel in read_manifest(tmp)[1]["files"]:
        try:
            check_release_file(rel)
        except RegistryError as exc:
            raise RegistryError(f"{model}@{version}: remote manifest: {exc}") from None
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(fs.join(remote_dir, rel), str(target))
    problems = verify_dir(tmp, sha, release=(model, version))
    if problems:
        raise RegistryError(f"{model}@{version} from the remote fails verification, not fetched: "
                            + "; ".join(problems))
    for f in tmp.rglob("*"):
        if f.is_file():
            f.chmod(0o444)
