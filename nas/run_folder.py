"""The run folder of a search: made (or reopened, with --resume) and locked for one driver at a time,
and copied to `--artifacts-uri` at the end.

A new run that fails or is interrupted before any trial started leaves nothing behind, so that the
retry is not refused as a run that exists.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .config import SearchConfig
from .records import STUDY_DB


class RunFolderError(RuntimeError):
    """The run folder exists (use --resume or --force) or another search is using it."""


@contextmanager
def locked_run_dir(cfg: SearchConfig) -> Iterator[Path]:
    """Create (or reopen, with --resume) the run folder and hold an exclusive lock on it.

    A new run that fails (or is interrupted) before any trial started leaves nothing behind: a
    folder it made would make the retry refuse it as a run that exists."""
    run_dir = cfg.run_dir
    new = not _holds_a_run(run_dir)
    if not new:
        if cfg.options.force:
            _lock_or_refuse(run_dir).close()  # never delete a folder another search is using
            shutil.rmtree(run_dir)
            new = True
        elif not cfg.options.resume:
            raise RunFolderError(f"{run_dir} already holds a run; add --resume to continue it or --force to replace it")
    made = _first_missing(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _lock_or_refuse(run_dir)
    except OSError as exc:
        raise RunFolderError(f"--out {cfg.options.out}: cannot create the run folder {run_dir} "
                             f"({exc.strerror or exc})") from None
    try:
        yield run_dir
    except BaseException:
        if new and not _trials_started(cfg):
            _remove_new(run_dir, made)
        raise
    finally:
        handle.close()


def _holds_a_run(run_dir: Path) -> bool:
    """Whether the folder holds anything but a lock (which a failed start of an older version left)."""
    return run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir())


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (None: it exists)."""
    missing = None
    while not path.exists() and path.parent != path:
        missing, path = path, path.parent
    return missing


def _trials_started(cfg: SearchConfig) -> bool:
    """Whether any trial of the study went beyond the queue: a run worth keeping and resuming."""
    run_dir = cfg.run_dir
    if cfg.resources.storage is not None:  # the study lives elsewhere: trials leave their traces here
        return _holds_a_run(run_dir)
    db = run_dir / STUDY_DB
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state != 'WAITING'").fetchone()[0] > 0
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)  # unreadable for another reason: keep it


def _remove_new(run_dir: Path, made: Path | None) -> None:
    """Remove what this run made: the folders it created, or the contents of the folder it found empty."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _lock_or_refuse(run_dir: Path):
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(f"{run_dir} is in use by another running search") from None
    return handle


def publish_run_folder(run_dir: Path, uri: str) -> str:
    """Copy the run folder (but its lock) to `uri`/<study>, a shared path or any file system pyarrow
    (which Ray uses for its own storage) reaches; returns where it went."""
    import pyarrow.fs as pafs

    target = f"{uri.rstrip('/')}/{run_dir.name}"
    fs, path = pafs.FileSystem.from_uri(target if "://" in target else str(Path(target).resolve()))
    fs.create_dir(path, recursive=True)
    local = pafs.LocalFileSystem()
    for info in local.get_file_info(pafs.FileSelector(str(run_dir.resolve()), recursive=True)):
        rel = os.path.relpath(info.path, run_dir.resolve())
        if rel == ".lock":
            continue
        if info.type == pafs.FileType.Directory:
            fs.create_dir(f"{path}/{rel}", recursive=True)
        else:
            pafs.copy_files(info.path, f"{path}/{rel}", source_filesystem=local, destination_filesystem=fs)
    return target
