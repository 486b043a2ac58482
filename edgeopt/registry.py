"""Edge release registry: immutable, checksummed releases in a plain (DVC-trackable) directory. Torch-free.

Layout::

    <root>/.lock                       filelock serialising every writer
    <root>/<model>/registry.json       the record: each release's manifest sha256, channels with history
    <root>/<model>/<version>/          one release: the shipped files + manifest.json (files read-only)

A pulled copy holds the same files plus `.edgeopt-pull.json` (which release, which files): `pull` only ever
replaces a directory holding that marker and nothing but the files it lists, so it never deletes a user's files.

A release is written into a temporary sibling and renamed into place under the lock, and the record is
replaced atomically afterwards, so readers never see a mixed entry. The record keeps the sha256 of each
manifest, so a manifest edited after promotion is detected by `verify`, `pull` and channel moves.
"""
from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from edgeopt.errors import JSONFileError, NotRegularFileError, PathEscapeError, RegistryError, safe_text
from edgeopt.io import (clean_stale_siblings, exchange, fsync_dir, loads_strict, read_bytes_regular, sha256_bytes,
                        sha256_file, sha256_json, temp_dir_next_to, to_jsonable, write_json)
from edgeopt.paths import confined

FORMAT = "edgeopt-registry/1"
RELEASE_FORMAT = "edgeopt-release/1"
MANIFEST = "manifest.json"
RECORD = "registry.json"
LOCK = ".lock"
PULL_MARKER = ".edgeopt-pull.json"
PULL_FORMAT = "edgeopt-pull/1"
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}
MAX_RECORD_BYTES = 16 << 20  # manifests and records are KB-sized: never read a giant one into memory
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
CHANNEL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_SEMVER = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$", re.ASCII)  # no "1١.0.0"
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# Always fullmatch: with re.match, '$' also matches before a trailing newline ('1.0.0\n' would pass).


# --- names -------------------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise RegistryError(f"model name {name!r} refused: use 1-64 of a-z 0-9 . _ - starting with a letter or "
                            f"digit (no '/', '..' or absolute paths)")
    return name


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not re.fullmatch(CHANNEL_PATTERN, channel):
        raise RegistryError(f"channel {channel!r} refused: use 1-32 of a-z 0-9 _ - starting with a letter or digit")
    return channel


def check_version(version: str) -> str:
    v = version[1:] if isinstance(version, str) and version.startswith("v") else version
    if not isinstance(v, str) or not _SEMVER.fullmatch(v):
        raise RegistryError(f"version {version!r} refused: use semantic versioning MAJOR.MINOR.PATCH, e.g. 1.4.2")
    return v


def check_file_name(rel: str) -> str:
    """A file path inside a release: relative, plain parts only (a manifest cannot point outside its dir)."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if (not parts or rel != "/".join(parts)  # normalised only: no "a//b", "./a", "a/" (verify would never match)
            or "\\" in rel or not all(_FILE_PART.fullmatch(p) for p in parts)):
        raise RegistryError(f"file name {rel!r} refused: release files must be relative paths of plain names "
                            f"(no '..', no absolute paths)")
    return rel


def check_release_file(rel: str) -> str:
    """A file shipped in a release: a plain name (check_file_name) that is not one edgeopt writes beside it."""
    check_file_name(rel)  # (this already refuses dot names such as the pull marker)
    if PurePosixPath(rel).parts[0].casefold() == MANIFEST:  # casefold: one file on macOS / Windows disks
        raise RegistryError(f"file name {rel!r} refused: {MANIFEST} is written by the registry itself; rename "
                            f"the file")
    return rel


def load_json_doc(path: Path, what: str) -> Any:
    """A registry JSON file (manifest, record, pull marker): regular file, <= 16 MiB, no duplicate keys."""
    try:
        return loads_strict(read_bytes_regular(path, MAX_RECORD_BYTES))
    except FileNotFoundError:
        raise RegistryError(f"{path}: {what} missing") from None
    except (JSONFileError, NotRegularFileError) as exc:
        raise RegistryError(f"{path}: {what} unreadable ({exc})") from None


def check_record(doc: Any, model: str, path: Path, *, shared: bool = False) -> dict[str, Any]:
    """A registry record with the expected shape, else RegistryError naming what is wrong (hand-edited?).

    shared: a record coming from (or going to) a remote: every history entry must also name its release's
    manifest. Locally `verify` reports such an entry; merged in, it could never be removed again (histories
    only grow), so a remote record carrying one is refused whole."""
    def bad(what: str) -> RegistryError:
        return RegistryError(f"{path}: registry record malformed ({what}); restore it from version control or "
                             f"a backup (registry.json edited?)")

    if not isinstance(doc, dict) or not isinstance(doc.get("releases"), dict) or not isinstance(
            doc.get("channels"), dict):
        raise bad("expected an object with 'releases' and 'channels' objects")
    if doc.get("model", model) != model:
        raise bad(f"it is the record of model {doc.get('model')!r}")
    for version, rel in doc["releases"].items():
        if not isinstance(version, str) or not _SEMVER.fullmatch(version):
            raise bad(f"release key {version!r} is not a version")
        if not isinstance(rel, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(rel.get("manifest_sha256"))):
            raise bad(f"release {version}: no manifest_sha256")
    for channel, info in doc["channels"].items():
        if not isinstance(channel, str) or not re.fullmatch(CHANNEL_PATTERN, channel):
            raise bad(f"channel key {channel!r} is not a channel name")
        history = info.get("history") if isinstance(info, dict) else None
        if not isinstance(history, list) or not all(
                isinstance(e, dict) and isinstance(e.get("version"), str) and _SEMVER.fullmatch(e["version"])
                for e in history):
            raise bad(f"channel {channel}: history must be a list of entries with a version")
        unknown = sorted({e["version"] for e in history} - set(doc["releases"]), key=semver_key)
        if unknown:
            raise bad(f"channel {channel}: history names version(s) {', '.join(unknown)} that are not releases")
        wrong = sorted({e["version"] for e in history if shared and e.get("manifest_sha256")
                        != doc["releases"][e["version"]]["manifest_sha256"]}, key=semver_key)
        if wrong:
            raise bad(f"channel {channel}: history entries for {', '.join(wrong)} do not name that release's "
                      f"manifest sha256")
    return doc


def semver_key(version: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in check_version(version).split("."))  # type: ignore[return-value]


def bump_version(version: str | None, part: str) -> str:
    """Next version after `version` (None: after 0.0.0, so the first patch release is 0.0.1)."""
    major, minor, patch = semver_key(version or "0.0.0")
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise RegistryError(f"registry.bump {part!r} refused: use major, minor or patch")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`model`, `model@1.2.3` / `model@v1.2.3` (a version) or `model@production` (a channel)."""
    model, _, selector = ref.partition("@")
    check_name(model)
    if not selector:
        return model, None
    if _SEMVER.fullmatch(selector.lstrip("v")):
        return model, check_version(selector)
    return model, check_channel(selector)


def actor(via: str = "") -> str:
    """Who/what made a change: EDGEOPT_ACTOR, the CI run, or user@host."""
    who = os.environ.get("EDGEOPT_ACTOR")
    if not who and os.environ.get("GITHUB_ACTIONS"):
        who = (f"github-actions:{os.environ.get('GITHUB_WORKFLOW', '?')}#{os.environ.get('GITHUB_RUN_ID', '?')}"
               f" ({os.environ.get('GITHUB_ACTOR', '?')})")
    if not who:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid())
        who = f"{user}@{socket.gethostname()}"
    return f"{who} via {via}" if via else who


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def channel_stack(history: list[dict]) -> list[str]:
    """Pointer stack from a channel history: a promote pushes, a rollback pops. The top is the current version."""
    stack: list[str] = []
    for entry in history:
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != entry["version"]:
                stack.append(entry["version"])
        elif not stack or stack[-1] != entry["version"]:
            stack.append(entry["version"])
    return stack


def _inside(d: Path, rel: str) -> Path:
    """d / rel for a release file: a plain name (check_file_name), no symlink on the way, resolving inside d."""
    check_file_name(rel)
    try:
        f = confined(d, rel, "file")
    except PathEscapeError as exc:
        raise RegistryError(str(exc)) from None
    parts = PurePosixPath(rel).parts
    for i in range(1, len(parts)):  # a symlinked directory inside the release could be re-pointed later
        if (d.joinpath(*parts[:i])).is_symlink():
            raise RegistryError(f"file {rel!r} refused: {'/'.join(parts[:i])} is a symbolic link")
    return f


def read_manifest(d: Path) -> tuple[bytes, dict[str, Any]]:
    """(raw bytes, manifest) of a release directory; RegistryError when it is missing or malformed."""
    mpath = d / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise RegistryError(f"{mpath}: manifest missing (or not a regular file)")
    try:
        raw = read_bytes_regular(mpath, MAX_RECORD_BYTES)
        manifest = loads_strict(raw)
    except (JSONFileError, NotRegularFileError) as exc:
        raise RegistryError(f"{mpath}: manifest unreadable ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              for v in files.values()):
        raise RegistryError(f"{mpath}: manifest unreadable or without 'files' (an object of file name -> sha256)")
    return raw, manifest


def read_pull_marker(d: Path) -> dict[str, Any] | None:
    """The marker `pull` leaves in a pulled copy, or None (absent or malformed: then not an earlier pull)."""
    path = d / PULL_MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = load_json_doc(path, "pull marker")
    except RegistryError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != PULL_FORMAT or not isinstance(doc.get("files"), list):
        return None
    try:
        for rel in doc["files"]:
            check_file_name(rel)
    except RegistryError:
        return None
    return doc


def verify_dir(release_dir: str | Path, manifest_sha256: str | None = None, pulled: bool = False,
               release: tuple[str, str] | None = None) -> list[str]:
    """Problems of a release directory against its manifest (and against the recorded manifest hash).

    pulled: a copy made by `pull`: its marker file is expected (a damaged one is a problem), and the manifest
    hash it recorded is checked when no `manifest_sha256` is given.
    release: (model, version) the manifest must say it is (publish writes both fields).
    """
    d = Path(release_dir)
    mpath = d / MANIFEST
    try:
        raw, manifest = read_manifest(d)
    except RegistryError as exc:
        return [str(exc)]
    problems = []
    marker = read_pull_marker(d) if pulled else None
    if pulled and marker is None and ((d / PULL_MARKER).exists() or (d / PULL_MARKER).is_symlink()):
        problems.append(f"{d / PULL_MARKER}: damaged (not the marker pull writes); pull the release into a new directory")
    if release is not None and (manifest.get("name"), manifest.get("version")) != release:
        problems.append(f"{mpath}: says it is {manifest.get('name')!r}@{manifest.get('version')!r}, not "
                        f"{release[0]}@{release[1]}")
    if manifest_sha256 is None and marker is not None and isinstance(marker.get("manifest_sha256"), str):
        manifest_sha256 = marker["manifest_sha256"]
        if sha256_bytes(raw) != manifest_sha256:
            problems.append(f"{mpath}: manifest edited after the pull (sha256 differs from {PULL_MARKER})")
    elif manifest_sha256 and sha256_bytes(raw) != manifest_sha256:
        problems.append(f"{mpath}: manifest edited after promotion (sha256 differs from the registry record)")
    if marker is not None and (manifest.get("name"), manifest.get("version")) != (marker.get("model"),
                                                                                marker.get("version")):
        problems.append(f"{mpath}: says it is {manifest.get('name')!r}@{manifest.get('version')!r}, but "
                        f"{marker.get('release')!r} was pulled here ({PULL_MARKER})")
    files = manifest["files"]
    if not files:
        problems.append(f"{mpath}: lists no files: nothing of the release can be verified (or run)")
    for rel, info in files.items():
        try:
            check_release_file(rel)
            f = d / rel
            if f.is_symlink() or not f.is_file():
                problems.append(f"{f}: missing (or not a regular file)")
                continue
            _inside(d, rel)
        except RegistryError as exc:
            problems.append(f"{mpath}: {safe_text(exc)}")
            continue
        if sha256_file(f) != info["sha256"]:
            problems.append(f"{f}: content changed (sha256 differs from the manifest)")
    primary = manifest.get("primary")
    if "primary" in manifest and (not isinstance(primary, str) or primary not in files):
        problems.append(f"{mpath}: primary file {primary!r} is not one of the verified files of the release")
    known = set(files) | {MANIFEST} | ({PULL_MARKER} if pulled and (d / PULL_MARKER).is_file() else set())
    for f in sorted(p for p in d.rglob("*") if not p.is_dir() or p.is_symlink()):
        if f.relative_to(d).as_posix() not in known:
            problems.append(f"{safe_text(f)}: unexpected file, not in the manifest")
    return problems


def copy_release(src_dir: Path, files: list[str], dst_dir: Path) -> None:
    for rel in [MANIFEST, *files]:
        target = dst_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_dir / rel, target)


class Registry:
    """A directory registry. Every write holds the registry lock; reads need none (writes are atomic)."""

    def __init__(self, root: str | Path, lock_timeout: float = 120.0):
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self._lock = None  # one FileLock per instance: re-entrant, so rollback can hold it across point()

    # --- reading -------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Models with a record, and those with only release directories (a first promotion interrupted
        between publishing its directory and writing the record: `verify` must still see it)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if re.fullmatch(NAME_PATTERN, p.name) and p.is_dir() and not p.is_symlink()
                      and ((p / RECORD).exists() or any(_SEMVER.fullmatch(c.name) for c in p.iterdir())))

    def record(self, model: str) -> dict[str, Any]:
        path = self.root / check_name(model) / RECORD
        if not path.exists() and not path.is_symlink():
            return {"format": FORMAT, "model": model, "releases": {}, "channels": {}}
        if path.is_symlink():
            raise RegistryError(f"{path}: registry record is a symbolic link (replaced?); restore the file")
        return check_record(load_json_doc(path, "registry record"), model, path)

    def versions(self, model: str) -> list[str]:
        """Recorded versions plus any release directory on disk (so a half-recorded one is never reused)."""
        found = set(self.record(model)["releases"])
        mdir = self.root / model
        if mdir.is_dir():
            found |= {p.name for p in mdir.iterdir() if p.is_dir() and _SEMVER.fullmatch(p.name)}
        return sorted(found, key=semver_key)

    def channel(self, model: str, channel: str) -> str | None:
        history = self.record(model)["channels"].get(check_channel(channel), {}).get("history", [])
        stack = channel_stack(history)
        return stack[-1] if stack else None

    def resolve(self, ref: str) -> tuple[str, str]:
        """(model, version) of `model`, `model@version` or `model@channel`; the latest release for `model`."""
        model, selector = parse_ref(ref)
        record = self.record(model)
        if not record["releases"]:
            raise RegistryError(f"{model}: no releases in registry {self.root}; promote one first")
        if selector is None:
            return model, max(record["releases"], key=semver_key)
        if _SEMVER.fullmatch(selector):
            if selector not in record["releases"]:
                raise RegistryError(f"{model}@{selector}: no such release in {self.root} "
                                    f"(versions: {', '.join(sorted(record['releases'], key=semver_key))})")
            return model, selector
        version = self.channel(model, selector)
        if version is None:
            raise RegistryError(f"{model}@{selector}: channel {selector!r} points at nothing "
                                f"(channels: {', '.join(sorted(record['channels'])) or 'none'})")
        return model, version

    def release_dir(self, model: str, version: str) -> Path:
        return self.root / check_name(model) / check_version(version)

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        return read_manifest(self.release_dir(model, version))[1]

    def verify(self, model: str | None = None, version: str | None = None) -> list[str]:
        """Every problem found (empty: all releases intact and matching the record)."""
        problems: list[str] = []
        for m in [check_name(model)] if model else self.models():
            try:
                record = self.record(m)
            except RegistryError as exc:
                problems.append(str(exc))
                continue
            if model and not record["releases"] and not self.versions(m):
                problems.append(f"{m}: no such model in the registry {self.root} (models: "
                                f"{', '.join(self.models()) or 'none'})")
                continue
            releases = record["releases"]
            for v in [version] if version else self.versions(m):
                if v not in releases:
                    problems.append(f"{self.root / m / v}: release directory not in the registry record "
                                    f"(interrupted promotion?); remove it" if (self.root / m / v).exists()
                                    else f"{m}@{v}: no such release")
                    continue
                d = self.release_dir(m, v)
                if d.is_symlink():
                    problems.append(f"{d}: release directory is a symbolic link (replaced?); releases are "
                                    f"directories of the registry")
                    continue
                if not d.is_dir():
                    problems.append(f"{d}: release directory missing")
                    continue
                problems += verify_dir(d, releases[v]["manifest_sha256"], release=(m, v))
            for ch, info in record["channels"].items():
                for entry in info.get("history", []):
                    rel = releases.get(entry["version"])
                    if version and entry["version"] != version:
                        continue
                    if rel is None or rel["manifest_sha256"] != entry.get("manifest_sha256"):
                        problems.append(f"{m}@{ch}: history entry for {entry['version']} does not match the "
                                        f"release record (registry.json edited?)")
        return problems

    # --- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = FileLock(str(self.root / LOCK), timeout=self.lock_timeout)
        try:
            self._lock.acquire()
        except Timeout:
            raise RegistryError(f"{self.root / LOCK}: registry busy (locked by another process for "
                                f"{self.lock_timeout:.0f} s); retry later") from None
        try:
            yield
        finally:
            self._lock.release()

    def publish(self, model: str, files: dict[str, str | Path], manifest: dict[str, Any], *,
                version: str | None = None, bump: str = "patch", by: str | None = None,
                taken: frozenset[str] | set[str] = frozenset(),
                expected_sha256: dict[str, str] | None = None) -> dict[str, Any]:
        """Add a release holding `files` ({name in release: source path}) with `manifest` (+ files, hashes).

        Identical content (same file names and hashes as the latest release) is a no-op that returns the
        latest release (`created: False`). An explicit `version` that already exists is refused. `taken`: versions
        used outside this directory (e.g. git tags of releases made elsewhere): never reused either.
        `expected_sha256` ({name: sha256}) guards against files changing under us: the copies must match.
        """
        check_name(model)
        if version is not None:
            version = check_version(version)
        if not files:
            raise RegistryError(f"{model}: a release needs at least one file")
        for rel in files:
            check_release_file(rel)
        folded: dict[str, str] = {}
        for rel in sorted(files):  # one name on a macOS / Windows disk: the release would never verify there
            parts = PurePosixPath(rel).parts
            for prefix in ("/".join(parts[:i]) for i in range(1, len(parts) + 1)):  # folders too
                if folded.setdefault(prefix.casefold(), prefix) != prefix:
                    raise RegistryError(f"release paths {folded[prefix.casefold()]!r} and {prefix!r} refused: they "
                                        f"differ only in case (one name on macOS / Windows disks); rename one")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("lineage", {}), dict):
            raise RegistryError(f"{model}: manifest must be an object (and its lineage an object)")
        if "primary" in manifest and (not isinstance(manifest["primary"], str) or manifest["primary"] not in files):
            raise RegistryError(f"{model}: primary file {manifest['primary']!r} is not one of the release files "
                                f"{sorted(files)}")
        by = by or actor()
        with self.locked():
            content = {rel: sha256_file(src) for rel, src in sorted(files.items())}
            if expected_sha256 is not None and content != dict(sorted(expected_sha256.items())):
                raise RegistryError(f"{model}: files differ from the expected sha256 (changed while promoting?)")
            existing = self.versions(model)
            if version in taken:
                raise RegistryError(f"{model}@{version} refused: that version was released before (git tag "
                                    f"{model}@v{version} exists); version numbers are never reused")
            if version in existing:
                raise RegistryError(f"{model}@{version} already exists; releases are immutable. Let "
                                    f"registry.bump pick the next version, or point a channel at it with "
                                    f"`edgeopt registry promote {model}@{version} --channel CHANNEL`")
            latest = existing[-1] if existing else None
            if version is not None and latest is not None and semver_key(version) < semver_key(latest):
                raise RegistryError(f"{model}@{version} refused: versions only go up and {latest} exists")
            record = self.record(model)
            if latest is not None and latest in record["releases"]:
                old = self.manifest(model, latest)
                if {k: v["sha256"] for k, v in old.get("files", {}).items()} == content:
                    return {"model": model, "version": latest, "created": False,
                            "path": self.release_dir(model, latest),
                            "manifest_sha256": record["releases"][latest]["manifest_sha256"],
                            "note": f"identical content to {model}@{latest}; no new release"}
            highest = max([*existing, *taken], key=semver_key, default=None)
            version = version or bump_version(highest, bump)
            # which release this is and when it was made: the registry's to say, never the caller's
            manifest = {"format": RELEASE_FORMAT, **manifest, "name": model, "version": version,
                        "created": now_iso(), "created_by": by}
            manifest["lineage"] = {**manifest.get("lineage", {}), "parent": f"{model}@{latest}" if latest else None}
            manifest["files"] = {rel: {"sha256": h, "bytes": Path(files[rel]).stat().st_size}
                                 for rel, h in content.items()}
            manifest["content_sha256"] = sha256_json(content)
            raw = (json.dumps(to_jsonable(manifest), indent=2, allow_nan=False) + "\n").encode()  # strict JSON
            final = self.release_dir(model, version)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.parent.is_symlink() or final.parent.resolve().parent != self.root.resolve():
                raise RegistryError(f"{final.parent}: model directory is a symbolic link out of the registry "
                                    f"{self.root}; refusing to write through it")
            for leftover in final.parent.glob(".incoming-*"):  # we hold the lock: its writer died mid-copy
                shutil.rmtree(leftover, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{version}-", dir=final.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it private; a shared registry must stay readable
                for rel, src in files.items():
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, tmp / rel)
                    if sha256_file(tmp / rel) != content[rel]:
                        raise RegistryError(f"{src}: changed while being copied into the registry; retry")
                (tmp / MANIFEST).write_bytes(raw)
                for f in tmp.rglob("*"):
                    if f.is_file():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                        f.chmod(0o444)  # releases are immutable; make accidental edits fail loudly
                try:
                    os.rename(tmp, final)  # fails if the version dir appeared meanwhile: never a mixed entry
                except OSError:
                    raise RegistryError(f"{model}@{version} already exists (written concurrently); retry") from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            record["releases"][version] = {"manifest_sha256": sha256_bytes(raw),
                                           "content_sha256": manifest["content_sha256"],
                                           "created": manifest["created"], "by": by}
            try:
                write_json(self.root / model / RECORD, record)
            except BaseException:  # disk full, read-only...: no release without its record (a kill still can)
                shutil.rmtree(final, ignore_errors=True)
                raise
            return {"model": model, "version": version, "created": True, "path": final,
                    "manifest_sha256": sha256_bytes(raw), "note": None}

    def point(self, model: str, channel: str, version: str, *, by: str | None = None,
              action: str = "promote") -> dict[str, Any]:
        """Point `channel` at an existing, verified release (a no-op if it already points there)."""
        check_channel(channel)
        version = check_version(version)
        with self.locked():
            record = self.record(model)
            if version not in record["releases"]:
                raise RegistryError(f"{model}@{version}: no such release in {self.root}")
            problems = verify_dir(self.release_dir(model, version), record["releases"][version]["manifest_sha256"],
                                  release=(model, version))
            if problems:
                raise RegistryError(f"{model}@{version} fails verification, not pointing {channel!r} at it: "
                                    + "; ".join(problems))
            history = record["channels"].setdefault(channel, {"history": []})["history"]
            stack = channel_stack(history)
            previous = stack[-1] if stack else None
            if previous == version and action == "promote":
                return {"model": model, "channel": channel, "version": version, "previous": previous,
                        "changed": False}
            history.append({"version": version, "time": now_iso(), "by": by or actor(), "action": action,
                            "from": previous, "manifest_sha256": record["releases"][version]["manifest_sha256"]})
            write_json(self.root / model / RECORD, record)
            return {"model": model, "channel": channel, "version": version, "previous": previous, "changed": True}

    def rollback(self, model: str, channel: str, *, by: str | None = None) -> dict[str, Any]:
        """Move `channel` back to the version it pointed at before the current one."""
        with self.locked():
            stack = channel_stack(self.record(check_name(model))["channels"].get(check_channel(channel), {})
                                  .get("history", []))
            if len(stack) < 2:
                raise RegistryError(f"{model}@{channel}: no previous pointer to roll back to "
                                    f"(history holds {len(stack)} version(s))")
            return self.point(model, channel, stack[-2], by=by, action="rollback")

    def pull(self, ref: str, dest: str | Path) -> dict[str, Any]:
        """Copy a verified release to `dest`: a new or empty directory, or an earlier pull (its marker lists
        every file in it). Anything else is refused: pull never deletes what it did not create, never writes
        inside the registry, never follows a symlinked destination. The copy is verified before it replaces
        `dest` in one rename, and gets the user's umask."""
        model, version = self.resolve(ref)
        record = self.record(model)
        sha = record["releases"][version]["manifest_sha256"]
        src = self.release_dir(model, version)
        problems = verify_dir(src, sha, release=(model, version))
        if problems:
            raise RegistryError(f"{model}@{version} fails verification, not pulled: " + "; ".join(problems))
        dest = self._absolute_destination(dest)
        self._check_destination(dest)
        files = list(self.manifest(model, version)["files"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _pull_lock(dest, self.lock_timeout):  # two pulls into one directory: one after the other
            self._check_destination(dest)
            stage = temp_dir_next_to(dest)
            try:
                copy_release(src, files, stage)
                marker = {"format": PULL_FORMAT, "release": f"{model}@{version}", "model": model,
                          "version": version, "manifest_sha256": sha, "files": [MANIFEST, *files],
                          "registry": str(self.root.resolve()), "pulled": now_iso(), "by": actor()}
                (stage / PULL_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
                problems = verify_dir(stage, sha, pulled=True)
                if problems:
                    raise RegistryError(f"copy of {model}@{version} is corrupt: " + "; ".join(problems))
                old = self._install(stage, dest)
            except BaseException as exc:
                shutil.rmtree(stage, ignore_errors=True)
                if isinstance(exc, OSError) and exc.errno in _WRITE_ERRORS:  # name the destination, not the temp copy
                    raise type(exc)(exc.errno, exc.strerror, str(dest)) from exc
                raise
            kept = _remove_earlier_pull(old, dest) if old is not None else None
            clean_stale_siblings(dest)
        return {"model": model, "version": version, "path": dest, "files": len(files) + 1, "kept": kept}

    @staticmethod
    def _absolute_destination(dest: str | Path) -> Path:
        """dest as an absolute path ("." has no name to put the temp copy and lock beside); not the working
        directory or one above it: pull replaces dest in one rename, which would leave the shell in a deleted
        directory."""
        try:
            cwd = Path(os.path.realpath(os.getcwd()))
        except FileNotFoundError:  # in a deleted directory: only a relative dest needs it
            if not Path(dest).is_absolute():
                raise RegistryError("the current directory no longer exists (replaced?); cd into a real "
                                    "directory, or give an absolute --to") from None
            return Path(dest)
        d = Path(os.path.abspath(dest))
        real = Path(os.path.realpath(d))
        if real == cwd or real in cwd.parents:
            raise RegistryError(f"{dest}: is the current directory{'' if real == cwd else ' or holds it'}; pull "
                                f"replaces the destination in one rename, so pull into a new directory instead "
                                f"(e.g. --to release)")
        return d

    def _check_destination(self, dest: Path) -> None:
        """Refuse a destination pull must not replace (see `pull`)."""
        if dest.is_symlink():
            raise RegistryError(f"{dest}: is a symbolic link; pull into a real directory (the link and its target "
                                f"are left alone)")
        real, root = Path(os.path.realpath(dest)), Path(os.path.realpath(self.root))
        if real == root or root in real.parents or real in root.parents:
            raise RegistryError(f"{dest}: {'inside' if root in real.parents or real == root else 'holds'} the "
                                f"registry {self.root}; pull to a directory outside it")
        if not dest.exists():
            return
        if not dest.is_dir():
            raise RegistryError(f"{dest}: exists and is not a directory; choose a new or empty directory")
        owner = dest.stat().st_uid
        if owner != os.geteuid():
            raise RegistryError(f"{dest}: owned by another user (uid {owner}); pull into a directory you own")
        if not any(dest.iterdir()):
            return
        marker = read_pull_marker(dest)
        if marker is None:
            raise RegistryError(f"{dest}: not empty and not an earlier pull (no valid {PULL_MARKER}); pull never "
                                f"replaces a directory it did not create: choose a new or empty directory")
        listed = set(marker["files"]) | {PULL_MARKER}
        parents = {PurePosixPath(f).parent.as_posix() for f in listed} - {"."}
        parents |= {PurePosixPath(p).parents[i].as_posix() for p in parents
                    for i in range(len(PurePosixPath(p).parents) - 1)}
        foreign = []
        for p in sorted(dest.rglob("*")):
            rel = p.relative_to(dest).as_posix()
            is_dir = p.is_dir() and not p.is_symlink()
            regular = p.is_file() and not p.is_symlink()
            if not ((is_dir and rel in parents) or (regular and rel in listed)):
                foreign.append(safe_text(rel))
        if foreign:
            raise RegistryError(f"{dest}: holds {len(foreign)} file(s) pull did not create "
                                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them "
                                f"away or choose another directory")

    def _install(self, stage: Path, dest: Path) -> Path | None:
        """Put the verified copy at `dest`; returns where the replaced earlier pull now is (None: nothing)."""
        for _ in range(10):  # another pull may create dest meanwhile: look again
            if not dest.exists() and not dest.is_symlink():
                try:
                    os.rename(stage, dest)  # atomic; refused when a non-empty dest appeared meanwhile
                    fsync_dir(dest.parent)
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    continue
            self._check_destination(dest)  # again, right before replacing it
            if exchange(stage, dest):
                fsync_dir(dest.parent)
                return stage
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            try:
                os.rename(stage, dest)
            except BaseException:
                os.rename(old, dest)  # put the earlier pull back
                raise
            return old
        raise RegistryError(f"{dest}: keeps changing while pulling (another pull into it?); retry")


@contextlib.contextmanager
def _pull_lock(dest: Path, timeout: float) -> Iterator[None]:
    """A lock file next to `dest` (`.<name>.pull.lock`, kept: removing a lock file races with its next user)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(dest.with_name(f".{dest.name}.pull.lock")), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise RegistryError(f"{dest}: another pull into it holds {lock.lock_file} for {timeout:.0f} s; retry "
                            f"later") from None
    try:
        yield
    finally:
        lock.release()


def _as_pulled(d: Path, marker: dict[str, Any]) -> dict[str, str]:
    """{file: sha256} of an earlier pull as it was pulled ({} when its manifest was edited: nothing is known)."""
    try:
        raw, manifest = read_manifest(d)
    except RegistryError:
        return {}
    if sha256_bytes(raw) != marker.get("manifest_sha256"):
        return {}
    return {MANIFEST: sha256_bytes(raw), **{rel: info["sha256"] for rel, info in manifest["files"].items()}}


def _remove_earlier_pull(old: Path, dest: Path) -> str | None:
    """Delete a replaced earlier pull: only the files its marker lists and that are still as pulled, then its
    empty directories. Anything else (a file edited since, one written into it while we pulled) is kept, the
    directory renamed next to `dest`; returns that path then."""
    stamp = f"{dest.name}.kept-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    for n in range(1000):  # first: killed while hashing below, an edited file must not stay under a temp name
        kept = dest.with_name(stamp + (f"-{n}" if n else ""))  # (temp names are removed by the next pull)
        if not kept.exists() and not kept.is_symlink():
            try:
                os.rename(old, kept)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    else:
        raise RegistryError(f"{old}: could not rename the earlier pull next to {dest}; it is kept as it is")
    old = kept
    marker = read_pull_marker(old) or {}
    pulled = _as_pulled(old, marker)
    for rel in marker.get("files", []) + [PULL_MARKER]:
        f = old / rel
        if f.is_symlink() or (f.is_file() and (rel == PULL_MARKER or sha256_file(f) == pulled.get(rel))):
            with contextlib.suppress(OSError):
                f.unlink()
    for d in sorted((p for p in old.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    try:
        old.rmdir()
        return None
    except OSError:
        return str(kept)
