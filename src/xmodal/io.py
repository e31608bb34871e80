"""Crash-safe file writing: the one place that knows how to replace a file or a folder atomically.

Lowest layer (imports only ``errors``). Everything that persists state goes through here:

- ``atomic_write(path, data)`` / ``atomic_write_json`` / ``atomic_path(path)``: write a temporary file in
  the same folder, fsync it, rename it over ``path``, fsync the folder. A reader (or a crash) sees the old
  file or the new one, never half of one.
- ``atomic_folder(path)``: save a set of files into a folder *in place* -- the user's folder is never
  replaced, its mode and a symlink pointing at it stay as they are. New files get fresh names, the commit
  file (an index's ``manifest.json``) that lists them is renamed in last, and only then are the files of
  the previous version removed. At every instant the folder holds a complete old or new version.
- ``replace_dir(tmp, final)`` / ``recover_dir(final)``: swap a whole private folder (a training checkpoint).
- ``folder_lock(path)``: an exclusive, process-death-safe lock on a folder (refuses when held).
- ``fault_point(step)``: a named step where tests inject a crash (``set_fault_hook``); a no-op otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import XmodalError

STAGING_PREFIX = ".xmodal-staging-"
LOCK_NAME = ".xmodal.lock"
# a stored (versioned) file name: "<stem>.v<12 hex><suffix>", e.g. "ids.v0123456789ab.json"
_VERSIONED = re.compile(r"^(?P<stem>[^/]+?)\.v[0-9a-f]{12}(?P<suffix>\.[^./]+)?$")

# ------------------------------------------------------------------ fault injection (tests)
_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Install ``hook(step)`` called at every named step of a save; returns the previous hook.

    Tests raise (or ``os.kill(os.getpid(), SIGKILL)``) from the hook to crash a save at an exact step.
    """
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def fault_point(step: str) -> None:
    if _fault_hook is not None:
        _fault_hook(step)


# ------------------------------------------------------------------ durability primitives
def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make renames inside ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it (any library); on success it replaces ``path``.

    On an error the temporary file is removed and ``path`` is untouched. ``durable=False`` skips the
    fsyncs (still atomic against a process crash, not against power loss): for many small files that
    can be rewritten, e.g. one feature record per image.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        fault_point(f"atomic_write:{path.name}:synced")
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write(path, json.dumps(obj, indent=indent))


# ------------------------------------------------------------------ folders saved in place
def versioned_name(name: str, token: str) -> str:
    """``ids.json`` -> ``ids.v<token>.json``: every save writes new names, so old files stay intact until the commit."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}.v{token}{dot}{suffix}" if dot else f"{stem}.v{token}"


def is_versioned_name(name: str) -> bool:
    return _VERSIONED.match(name) is not None


def listed_files(commit: dict[str, Any]) -> set[str]:
    """Stored file names a commit file (manifest) depends on: its ``files`` map, else (older indexes) its checksum keys."""
    if isinstance(commit.get("files"), dict) and commit["files"]:
        return {str(v) for v in commit["files"].values()}
    return {str(k) for k in (commit.get("checksums") or {})}


def _read_commit(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def clean_stale(path: str | Path, commit_name: str = "manifest.json") -> list[str]:
    """Remove what interrupted saves left in ``path``: staging folders, temp files and versioned files
    the current commit file does not list. Only names of xmodal's own patterns are touched."""
    path = Path(path)
    if not path.is_dir():
        return []
    commit = _read_commit(path / commit_name)
    # an unreadable commit file: keep every versioned file (they may be all that is left of the data)
    orphans_known = commit is not None or not (path / commit_name).exists()
    keep = listed_files(commit or {})
    removed = []
    for child in path.iterdir():
        name = child.name
        stale = (name.startswith(STAGING_PREFIX) or (name.startswith(".") and ".tmp-" in name)
                 or (orphans_known and is_versioned_name(name) and name not in keep))
        if stale:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(name)
    return removed


@contextmanager
def atomic_folder(path: str | Path, commit_name: str = "manifest.json") -> Iterator[Path]:
    """Save files into the folder ``path`` in place, crash-safe at every step.

    Yields a staging folder inside ``path``; write the new version's files there under their logical
    names, the commit file (``commit_name``, JSON) included. On success each staged file is fsynced and
    renamed into ``path`` under a fresh versioned name (``ids.json`` -> ``ids.v<token>.json``); then the
    commit file, with a ``"files"`` map {logical name: stored name} added, replaces the old one atomically
    (the single commit point); then the previous version's files are removed. ``path`` itself is never
    replaced: its mode, its other contents and a symlink to it are left as they are. On an error the
    staging folder is removed and the previous version is untouched.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)  # follows a symlinked path: the link's target is written into
    with folder_lock(path, "another save into this folder"):
        token = uuid.uuid4().hex[:12]
        staging = path / f"{STAGING_PREFIX}{token}"
        staging.mkdir()
        try:
            yield staging
            _commit(path, staging, commit_name, token)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _commit(path: Path, staging: Path, commit_name: str, token: str) -> None:
    if not (staging / commit_name).is_file():
        raise XmodalError(f"internal error: a folder save into '{path}' wrote no {commit_name}.")
    previous = _read_commit(path / commit_name)
    fault_point("folder:staged")
    mapping: dict[str, str] = {}
    for f in sorted(staging.iterdir()):
        if f.name == commit_name:
            continue
        if not f.is_file():
            raise XmodalError(f"internal error: a folder save may only write plain files, not '{f.name}'.")
        fsync_file(f)
        mapping[f.name] = versioned_name(f.name, token)
    fault_point("folder:synced")
    for logical, stored in mapping.items():
        os.replace(staging / logical, path / stored)
        fault_point(f"folder:renamed:{logical}")
    fsync_dir(path)
    commit = json.loads((staging / commit_name).read_text())
    commit["files"] = {**(commit.get("files") or {}), **mapping}  # files kept from the previous version + new ones
    atomic_write(path / commit_name, json.dumps(commit, indent=2, sort_keys=True))  # the commit point
    fault_point("folder:committed")
    old = listed_files(previous) if previous else set()
    for name in sorted(old - set(commit["files"].values())):
        target = path / name
        if "/" not in name and target.is_file() and not target.is_symlink():
            target.unlink()
            fault_point("folder:removed")
    fsync_dir(path)


# ------------------------------------------------------------------ whole private folders (checkpoints)
def fsync_tree(path: str | Path) -> None:
    if Path(path).is_file():
        fsync_file(path)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the complete folder (or file) ``tmp`` to ``final``, replacing a previous one.

    Two renames cannot be one atomic step, so the previous folder is first renamed to a hidden
    ``.NAME.old-*`` sibling; ``recover_dir(final)`` restores it if a crash struck between the renames.
    For private folders only (checkpoints): for user-facing folders use ``atomic_folder``.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    fault_point("dir:synced")
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if tmp.is_file() and not final.is_dir():  # one rename replaces a file atomically
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return final
    if final.exists():
        os.replace(final, old)
        fault_point("dir:moved-old")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    fault_point("dir:renamed")
    _remove(old)
    return final


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def recover_dir(final: str | Path) -> Path | None:
    """After a crash inside ``replace_dir``: put the last complete version back at ``final``; drop leftovers."""
    final = Path(final)
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime_ns)
    if not final.exists() and olds:
        try:
            os.replace(olds.pop(), final)
        except FileNotFoundError:  # another process (a DDP rank) recovered it first
            pass
        fsync_dir(final.parent)
    for o in olds:
        _remove(o)
    return final if final.exists() else None


# ------------------------------------------------------------------ exclusive folder lock
_locks: dict[str, Any] = {}
_locks_guard = threading.Lock()


@contextmanager
def folder_lock(path: str | Path, what: str = "another xmodal process") -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``path`` (created if absent) for the duration of the block.

    A second process refuses at once with a clear ``XmodalError`` instead of waiting: two writers of one
    index can never both proceed, and a user is told rather than left hanging. Re-entrant within one
    process (a build holds it while its index saves). Uses ``filelock`` (already a dependency of torch):
    an OS lock (``flock`` on POSIX, ``msvcrt`` on Windows) that the kernel releases when the process dies,
    so a ``kill -9`` never leaves a stale lock behind; the lock file itself is harmless and stays.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _locks_guard:
        lock = _locks.setdefault(key, FileLock(str(path / LOCK_NAME), thread_local=False))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise XmodalError(
            f"'{path}' is in use by {what} (locked by {path / LOCK_NAME}). Wait for it to finish, or choose "
            "another --out."
        ) from None
    try:
        yield path
    finally:
        lock.release()
