"""A store's life: begin a run (lock, resume or start), write shards, finish (manifest last).

Every writing stage goes through :func:`begin_run`, which replaces the per-stage resume checks:

1. ``out`` is created if needed and locked (one writer per store) before anything in it is read;
2. a complete store is refused (or, with ``overwrite``, emptied); a directory that is not a
   pairmine store is never touched;
3. the temporaries a killed run left are removed;
4. an unfinished run is resumed only if its identity (``.partial/run.json``: the format, the
   options and the inputs that decide the bytes) equals this run's; a new run writes its
   identity first, exclusively.

:meth:`Run.finish` writes ``manifest.json`` last and removes the work folder crash-safely: the
folder is first renamed aside, so a kill at any point leaves either an unfinished store that
resumes or a complete one (whose leftover folder the next run on it removes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pairmine.errors import StoreError
from pairmine.stores.atomic import (
    atomic_path,
    fault_point,
    remove_temporaries,
    stop_point,
    write_json_atomic,
    writing,
)
from pairmine.stores.lock import LOCK_FILE, StoreLock, current_writer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# formats whose layout changed since version 1 (a reader opens every version up to its own)
FORMAT_VERSIONS = {
    "pairmine/embeddings": 2,  # v2: per-shard content codes (codes/codes-NNNNN.npy)
}
# work in progress that is not part of a finished store (removed when the manifest lands)
PARTIAL_DIR = ".partial"
# the work folder renamed aside while a finished run removes it
FINISHING_DIR = ".partial-finished"
RUN_FILE = "run.json"  # in PARTIAL_DIR: the identity of the unfinished run

# what a user runs to (re)create each kind of store, for error messages
RECREATE = {
    "pairmine/embeddings": "pairmine embed SOURCE OUT --overwrite",
    "pairmine/pairs": "pairmine match EMB OUT --overwrite",
    "pairmine/export": "pairmine export PAIRS OUT --overwrite",
}


def shard_name(prefix: str, index: int, suffix: str, width: int = 5) -> str:
    """``shard_name("emb", 3, ".npy") == "emb-00003.npy"``."""
    return f"{prefix}-{index:0{width}d}{suffix}"


def format_version(fmt: str) -> int:
    """The version of format ``fmt`` that this pairmine writes (and the newest it reads)."""
    return FORMAT_VERSIONS.get(fmt, FORMAT_VERSION)


def pairmine_version() -> str:
    from pairmine.version import __version__

    return __version__


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path} is not a JSON object")
    return obj


def is_unfinished(store: Path) -> bool:
    return (store / PARTIAL_DIR).is_dir() or (store / FINISHING_DIR).is_dir()


def damaged(store: Path, file: str, reason: str, fmt: str) -> StoreError:
    """The one error for a store whose files do not match its format."""
    command = RECREATE.get(fmt, "the command that wrote it, with --overwrite")
    return StoreError(f"store {store} is damaged: {file}: {reason}", f"re-create it with "
                      f"`{command}`")


def read_manifest(store: Path, fmt: str) -> dict[str, Any]:
    """The manifest of a complete store of format ``fmt``, or a clear StoreError."""
    store = Path(store)
    if not store.exists():
        raise StoreError(f"store {store} does not exist", "check the path")
    if not store.is_dir():
        raise StoreError(f"{store} is a file, not a pairmine store", f"expected a {fmt} store")
    manifest = store / MANIFEST
    if not manifest.exists():
        writer = current_writer(store)
        if writer is not None:
            raise StoreError(f"store {store} is being written by {writer}",
                             "wait for it to finish, then run this command again")
        if is_unfinished(store):
            raise StoreError(f"store {store} is incomplete (no manifest.json)",
                             "rerun the command that writes it to resume it")
        raise StoreError(f"{store} is not a pairmine store (no manifest.json)",
                         f"expected a {fmt} store")
    try:
        obj = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise damaged(store, MANIFEST, f"not JSON ({str(exc)[:80]})", fmt) from None
    except OSError as exc:
        raise StoreError(f"cannot read {manifest}: {exc.strerror or exc}") from None
    if not isinstance(obj, dict):
        raise damaged(store, MANIFEST, "not a JSON object", fmt)
    if obj.get("format") != fmt:
        raise StoreError(f"{store} holds a {obj.get('format')!r} store, expected {fmt!r}")
    version = obj.get("version")
    if not isinstance(version, int):
        raise damaged(store, MANIFEST, "no format version", fmt)
    if version > format_version(fmt):
        raise StoreError(f"{store} was written by a newer pairmine (format version "
                         f"{version})", "upgrade pairmine")
    return obj


def finish_store(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last (atomically) and remove the work folder crash-safely."""
    manifest = {"format": manifest["format"], "version": format_version(manifest["format"]),
                "pairmine_version": pairmine_version(), **manifest}
    partial, finishing = out / PARTIAL_DIR, out / FINISHING_DIR
    with writing(out):
        if partial.exists():
            if finishing.exists():
                shutil.rmtree(finishing)
            os.replace(partial, finishing)
            fault_point()
    write_json_atomic(out / MANIFEST, manifest)
    with writing(out):
        _remove_tree(finishing)


def _remove_tree(root: Path) -> None:
    """``shutil.rmtree`` file by file, each removal a fault point (the crash tests kill the
    final clean-up half-way; the next run on the store removes the rest)."""
    if not root.exists():
        return
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
            fault_point()
        for name in dirs:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                os.rmdir(path)
    os.rmdir(root)


def input_record(store: Path) -> dict[str, str]:
    """How a store names an input store: its path and the sha256 of its manifest."""
    from pairmine.stores.atomic import sha256_file

    store = Path(store).resolve()
    return {"path": str(store), "manifest_sha256": sha256_file(store / MANIFEST)}


# ---------------------------------------------------------------------------------------------
# a run


@dataclass
class Run:
    """A writer's hold on a store: the lock, and whether it resumes an unfinished run."""

    out: Path
    format: str
    resumed: bool
    lock: StoreLock

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL_DIR

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest last, remove the work folder, release the lock."""
        finish_store(self.out, {"format": self.format, **manifest})
        self.close()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def begin_run(out: str | os.PathLike[str], kind: str, identity: dict[str, Any], *,
              overwrite: bool) -> Run:
    """Lock ``out`` and make it ready for a run writing a ``kind`` store (see module doc).

    ``identity`` is everything that decides the bytes of the store (options, inputs); a
    resumed run must have the same. Returns a :class:`Run` whose ``resumed`` says whether the
    finished shards of an earlier run are there to be reused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"output {out} exists and is not a directory",
                         "choose another output path")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    lock = StoreLock.acquire(out)
    stop_point()
    try:
        resumed = _prepare(out, kind, identity, overwrite)
    except BaseException:
        lock.release()
        raise
    return Run(out=out, format=kind, resumed=resumed, lock=lock)


def _prepare(out: Path, kind: str, identity: dict[str, Any], overwrite: bool) -> bool:
    manifest, partial, finishing = out / MANIFEST, out / PARTIAL_DIR, out / FINISHING_DIR
    if manifest.exists():
        # a finished run killed while removing its work folder or releasing the lock: what it
        # left goes, whether or not this run may replace the store
        if finishing.exists():
            shutil.rmtree(finishing)
        remove_temporaries(out)
    others = [p for p in out.iterdir() if p.name != LOCK_FILE]
    if manifest.exists() or is_unfinished(out):
        if manifest.exists() and not overwrite:
            raise StoreError(f"output {out} already holds a complete store "
                             f"({_format_of(manifest)})",
                             "pass --overwrite to replace it, or choose another path")
    elif others:
        hint = ("refusing to delete it even with --overwrite; choose another path" if overwrite
                else "choose an empty or new directory")
        raise StoreError(f"output {out} is a non-empty directory that is not a pairmine store",
                         hint)
    if overwrite:
        _empty(out)
    elif finishing.exists() and not partial.exists():
        os.replace(finishing, partial)  # killed between renaming the work folder and the manifest
    removed = remove_temporaries(out)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run in %s", len(removed), out)
    wanted = json.loads(json.dumps({"format": kind, **identity}, sort_keys=True,
                                   default=str))
    run_file = partial / RUN_FILE
    if run_file.exists():
        found = read_json(run_file)
        if found != wanted:
            changed = _differences(found, wanted)
            raise StoreError(f"{out} holds an unfinished run started with other options or "
                             f"another input (differs in: {', '.join(changed)})",
                             "rerun with the same options to resume it, or pass --overwrite "
                             "to start again")
        log.info("resuming the unfinished run in %s", out)
        return True
    # nothing of a run is there without its identity file (it is the first file a run writes)
    _empty(out)
    _write_exclusive(run_file, wanted)
    return False


def _differences(found: Any, wanted: Any, prefix: str = "") -> list[str]:
    """The dotted names of the entries in which two identities differ (e.g. config.seed)."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        out: list[str] = []
        for key in sorted(set(found) | set(wanted)):
            out += _differences(found.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    return [] if found == wanted else [prefix.rstrip(".")]


def _format_of(manifest: Path) -> str:
    try:
        return str(read_json(manifest).get("format"))
    except StoreError:
        return "a damaged manifest"


def _empty(out: Path) -> None:
    """Remove everything in ``out`` but the lock file."""
    with writing(out):
        for child in out.iterdir():
            if child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def _write_exclusive(target: Path, obj: Any) -> None:
    """Create ``target`` with ``obj`` as JSON, failing if it exists (``link`` is exclusive)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with atomic_path(target.parent / f"{target.name}.new") as tmp:
        tmp.write_text(text, encoding="utf-8")
    staged = target.parent / f"{target.name}.new"
    with writing(target):
        try:
            os.link(staged, target)
        except FileExistsError:
            raise StoreError(f"{target} appeared while this run was starting",
                             "another process writes this store; one writer per store") from None
        finally:
            staged.unlink(missing_ok=True)
