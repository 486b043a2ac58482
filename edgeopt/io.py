"""Atomic file and directory writes, hashing, JSON. Torch-free: the device-side tools use it too.

Every artifact is written to a temporary sibling and renamed into place, so a killed run never leaves a
half-written file under its final name. A temporary sibling carries its writer's pid
(`.<name>.<pid>-<random>.tmp`): the next successful write of the same target removes those whose writer is gone,
so a killed run leaves nothing behind for long. Files and directories get the user's umask (mkstemp/mkdtemp
would leave them private: 0600/0700).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeopt.errors import JSONFileError, NotRegularFileError

MAX_JSON_BYTES = 256 << 20  # every JSON record of the pipeline is KB-sized; refuse to load a giant one into memory


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-return)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's live process (or a number we cannot judge): keep its file
    return True


def clean_stale_siblings(path: str | Path, extra_patterns: tuple[str, ...] = ()) -> list[Path]:
    """Remove temp siblings of `path` left by writers that died (SIGKILL, power loss): `.<name>.<pid>-<rand>.tmp`
    and `.<name>.old-<pid>` whose pid is gone, and pid-less `.<name>.<rand>.tmp` of earlier versions. A live
    writer's files are kept, so two processes writing the same target never break each other."""
    path = Path(path)
    name = re.escape(path.name)
    patterns = [rf"^\.{name}\.(?:(?P<pid>\d+)-[a-z0-9_]+|[a-z0-9_]{{8}})\.tmp$", rf"^\.{name}\.old-(?P<pid>\d+)$",
                *extra_patterns]
    removed = []
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in siblings:
        m = next((m for p in patterns if (m := re.match(p, entry.name))), None)
        if m is None:
            continue
        pid = m.groupdict().get("pid")
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _with_filename(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~umask())  # mkstemp makes it 0600: give it the mode a plain write would
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _with_filename(exc, path)
    fsync_dir(path.parent)
    clean_stale_siblings(path)
    return path


def _with_filename(exc: BaseException, path: Path) -> BaseException:
    """An OSError while writing `path` names no file (ENOSPC from write/fsync) or our temp sibling: name the
    target instead, so the one-line message says which output could not be written."""
    if isinstance(exc, OSError) and exc.errno is not None and (
            exc.filename is None or Path(exc.filename).name.startswith(f".{path.name}.")):
        named = type(exc)(exc.errno, exc.strerror, str(path))
        named.__cause__ = exc
        return named
    return exc


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data. A NaN or infinite float becomes None: strict JSON has no such values (a bare `NaN` in a
    report breaks every other JSON reader)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (int, float, str)):  # numpy/torch scalar
        obj = obj.item()
    elif hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONFileError(f"duplicate key {key!r} (ambiguous: JSON readers disagree on which value counts)")
        out[key] = value
    return out


def loads_strict(raw: bytes | str) -> Any:
    """json.loads that refuses duplicate keys and absurd nesting (JSONFileError without the file name)."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise JSONFileError("nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JSONFileError(str(exc)) from None


def read_bytes_regular(path: str | Path, limit: int | None = None) -> bytes:
    """A regular file's bytes; never opens a FIFO or device for reading (that would block or never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{path}: not a regular file (a FIFO, device or directory)")
        if limit is not None and st.st_size > limit:
            raise JSONFileError(f"{path}: {st.st_size:,} bytes, more than the {limit:,} a record may have")
        return fh.read()


def read_json(path: str | Path, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first")
    try:
        raw = read_bytes_regular(path, limit)
    except NotRegularFileError:
        raise NotRegularFileError(f"{path}: {what} is not a regular file (a FIFO, device or directory); "
                                  f"refused") from None
    except JSONFileError as exc:
        raise JSONFileError(f"{exc}; {what} refused") from None
    try:
        return loads_strict(raw)
    except JSONFileError as exc:
        raise JSONFileError(f"{path}: {what} is not valid JSON ({exc}); rerun the stage that writes it") from None


def optional_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object record, or None when it is missing, unreadable or not an object (reports, lineage checks)."""
    try:
        doc = read_json(path)
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where the OS/filesystem lacks it."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def temp_dir_next_to(path: str | Path) -> Path:
    """A new hidden directory next to `path` (same file system: renames are atomic), named for stale-sibling
    cleanup and with the user's umask (mkdtemp makes it 0700)."""
    path = Path(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _with_filename(exc, path) from None
    try:
        tmp.chmod(0o777 & ~umask())
    except BaseException:
        tmp.rmdir()
        raise
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` whole, on failure it is removed.

    The previous content stays in place until the new one is complete, and is swapped out atomically where the
    OS allows it (Linux), so a run killed at any moment leaves either the old or the new tree under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_next_to(path)
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _with_filename(exc, path)
    if (path.exists() or path.is_symlink()) and exchange(tmp, path):
        fsync_dir(path.parent)  # one atomic swap: a kill at any point leaves the old or the new tree in place
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()  # old tree
        clean_stale_siblings(path)
        return
    old = None  # no atomic exchange here: two renames (a kill between them leaves the old tree at .<name>.old-<pid>)
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    clean_stale_siblings(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a regular file (a FIFO or device is refused before it is read: it would block or never end)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"{path}: not a regular file (a FIFO, device or directory); refused")
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of the canonical JSON form (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":")).encode())


def sha256_tree(path: str | Path) -> str:
    """Hash of a file or of a directory's files (relative names + contents), order-independent."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def gzip_size(path: str | Path) -> int:
    """Bytes after gzip -9 of a file, or of all files of a directory (what clustering buys on disk)."""
    import gzip

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return sum(len(gzip.compress(f.read_bytes(), compresslevel=9)) for f in files)


def tree_size(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
