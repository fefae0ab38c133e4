"""Atomic, path-safe writes: a failure never leaves a half-written output visible."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (memory independent of the file's size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(name: str) -> str:
    """Return ``name`` if it can be used as a single path component inside the lake, else raise.

    Partition keys come from file names in the landing directory; this keeps them from escaping the lake.
    """
    if not _SAFE_NAME.match(name) or name in {".", ".."} or ".." in name:
        raise ValueError(f"unsafe name for a lake path: {name!r}")
    return name


def lake_file(directory: Path, name: str, suffix: str) -> Path:
    """``directory/name+suffix`` for a validated ``name`` that is guaranteed to stay inside ``directory``."""
    path = (directory / f"{safe_name(name)}{suffix}").resolve()
    if path.parent != directory.resolve():
        raise ValueError(f"{name!r} escapes {directory}")
    return path


_TEMP_PID = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp$")
_OLD_PID = re.compile(r"^\.(.+)\.pid(\d+)\.old$")  # the previous version, moved aside during a directory swap


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_abandoned_temps(root: Path, skip: frozenset[Path] = frozenset()) -> list[Path]:
    """Remove what ``atomic_path`` writers killed mid-write (SIGKILL, OOM) left under ``root`` (not under ``skip``:
    trees no ``atomic_path`` writes to); a live writer's is kept. A temp holds a whole half-written output (token
    files, shards): removed. A previous version moved aside by a directory swap killed between its two renames is put
    back when the output is missing (the reader sees the last complete version again), else removed."""
    removed = []
    for directory, subdirs, _ in os.walk(root):
        subdirs[:] = [name for name in subdirs if Path(directory) / name not in skip]
        for name in list(subdirs):
            temp, old = _TEMP_PID.match(name), _OLD_PID.match(name)
            if temp is None and old is None:
                continue
            subdirs.remove(name)  # never descend into a temp
            if process_alive(int(temp.group(1)) if temp else int(old.group(2))):
                continue
            path = Path(directory) / name
            final = Path(directory) / old.group(1) if old else None
            if final is not None and not final.exists():
                os.replace(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path next to ``final``; on success rename it over ``final``, on failure remove it.

    Works for files and for directories (write a whole directory under the yielded path).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so a sweep can tell a killed writer's leftovers from a live one's work.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.pid{os.getpid()}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            old = final.with_name(f".{final.name}.pid{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` for the block (the holder's pid is written in it); yields whether it
    is held. With ``wait`` it waits for another holder (``on_wait`` is told that holder's pid first); without, it
    yields False at once. The kernel releases the lock when the holder dies, so a killed process never keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            handle.seek(0)
            if on_wait:
                on_wait(handle.read().strip() or "?")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_parquet_atomic(frame: pl.DataFrame, final: Path) -> Path:
    with atomic_path(final) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
    return final


def write_json_atomic(obj: Any, final: Path) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return final
