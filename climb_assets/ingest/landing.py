"""The landing directory: which files are shards, what partition key each gets, and which are refused and why.

Crawl drops carry any name (``part 0001 (copy).jsonl.gz``, unicode, quotes). A file is never ignored: it either
becomes a ``raw_shards`` partition or is refused with a reason that lands in the lake and the asset catalog. A name
that is already a safe lake name is its own partition key; any other name gets a slug plus a hash of its exact bytes
(so NFC and NFD spellings of the same word stay two files), and the registry maps the key back to the real file.

The landing sensor's tick only lists the directory and compares stat data: files whose inode change time (ctime:
set by a write, and by the rename that lands a file, even one that keeps an old mtime) is at or below the cursor's
high-water mark were seen by an earlier tick, so the work per tick is the new files only, and the cursor stays a few
names long however many files have landed. Content hashing happens in the ingest step, and in the sensor only for
a registered file whose size is the same but whose mtime moved (a copied or restored home).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.ingest.shards import SHARD_SUFFIXES, shard_suffix
from climb_assets.lake import landing_registry_dir, landing_rejected_path
from climb_assets.storage import (
    file_sha256,
    safe_name,
    write_json_atomic,
    write_parquet_atomic,
)

SLUG_CHARS = 60
NAME_HASH_CHARS = 10


def partition_key_for(name: str) -> str:
    """A safe, stable partition key for a landed file name (the name itself when it is already safe)."""
    try:
        return safe_name(name)
    except ValueError:
        pass
    suffix = shard_suffix(name) or ""
    stem = name[: len(name) - len(suffix)]
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_stem).strip("-")[:SLUG_CHARS].strip("-") or "shard"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:NAME_HASH_CHARS]
    return f"{slug}-{digest}{suffix.lower()}"


@dataclass(frozen=True)
class LandedFile:
    """A registered shard: its partition key, the real file name, and the stat seen when it was registered."""

    key: str
    name: str
    size: int
    mtime_ns: int


def register(home: ClimbHome, landed: LandedFile) -> None:
    write_json_atomic(asdict(landed), landing_registry_dir(home) / f"{safe_name(landed.key)}.json")


def registered(home: ClimbHome, key: str) -> LandedFile | None:
    path = landing_registry_dir(home) / f"{safe_name(key)}.json"
    return LandedFile(**json.loads(path.read_text())) if path.exists() else None


def landed_path(home: ClimbHome, key: str) -> Path:
    """The landed file behind a partition key (its original name from the registry, else the key itself)."""
    record = registered(home, key)
    return home.landing / (record.name if record else safe_name(key))


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str
    size: int
    mtime_ns: int


@dataclass
class LandingScan:
    new: list[LandedFile] = field(default_factory=list)
    changed: list[tuple[LandedFile, int, int]] = field(default_factory=list)  # (as registered, new size, new mtime)
    rejected: list[Rejection] = field(default_factory=list)
    cursor: dict = field(default_factory=dict)


def _refusal(name: str) -> str | None:
    if name.startswith("."):
        return "hidden file (a dot-file is usually an upload in progress): rename it to ingest it"
    if shard_suffix(name) is None:
        return f"unknown extension: a shard is one of {', '.join(SHARD_SUFFIXES)}"
    return None


def scan_landing(home: ClimbHome, cursor: dict, known_keys: set[str]) -> LandingScan:
    """Files that appeared or changed since the cursor's high-water mark, classified; a new bounded cursor.

    ``known_keys`` are the registered partitions (the instance is the authority, so a lost cursor re-examines
    every file but re-ingests none).
    """
    high = int(cursor.get("high_water_ctime_ns", -1))
    at_high = set(cursor.get("names_at_high_water", []))
    scan = LandingScan()
    if not home.landing.exists():
        scan.cursor = dict(cursor)
        return scan
    newest, names_at_newest = high, set(at_high)
    with os.scandir(home.landing) as entries:
        for entry in entries:
            stat = entry.stat(follow_symlinks=False)
            if stat.st_ctime_ns < high or (stat.st_ctime_ns == high and entry.name in at_high):
                continue
            if stat.st_ctime_ns > newest:
                newest, names_at_newest = stat.st_ctime_ns, {entry.name}
            elif stat.st_ctime_ns == newest:
                names_at_newest.add(entry.name)
            if not entry.is_file(follow_symlinks=False):
                scan.rejected.append(Rejection(entry.name, "not a regular file", stat.st_size, stat.st_mtime_ns))
                continue
            reason = _refusal(entry.name)
            if reason:
                scan.rejected.append(Rejection(entry.name, reason, stat.st_size, stat.st_mtime_ns))
                continue
            landed = LandedFile(partition_key_for(entry.name), entry.name, stat.st_size, stat.st_mtime_ns)
            record = registered(home, landed.key)
            if record is not None and record.name != entry.name:
                scan.rejected.append(Rejection(entry.name, f"partition key {landed.key} belongs to {record.name!r}",
                                               stat.st_size, stat.st_mtime_ns))  # fmt: skip
            elif landed.key not in known_keys:
                scan.new.append(landed)
            elif record is None or (record.size, record.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                scan.changed.append((record or landed, stat.st_size, stat.st_mtime_ns))
    scan.new.sort(key=lambda f: f.key)
    scan.cursor = {"high_water_ctime_ns": newest, "names_at_high_water": sorted(names_at_newest)}
    return scan


def changed_content(
    home: ClimbHome, changed: list[tuple[LandedFile, int, int]], ingested_sha256: Callable[[str], str | None]
) -> list[tuple[LandedFile, int, int]]:
    """The entries of ``changed`` whose bytes really changed. A file of the registered size whose sha256 is the one
    it was ingested with (a copied or restored CLIMB_HOME: new mtimes, same bytes) is re-registered with its new
    mtime instead, so it is hashed once, not reported."""
    really = []
    for landed, size, mtime_ns in changed:
        sha = ingested_sha256(landed.key) if size == landed.size else None
        if sha and file_sha256(home.landing / landed.name) == sha:
            register(home, replace(landed, mtime_ns=mtime_ns))
        else:
            really.append((landed, size, mtime_ns))
    return really


def record_rejections(home: ClimbHome, rejections: list[Rejection]) -> pl.DataFrame:
    """Add refused files to the lake's rejected-files table (one row per name and stat), atomically."""
    path = landing_rejected_path(home)
    schema = {"name": pl.String, "reason": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64}
    old = pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=schema)
    new = pl.DataFrame([asdict(r) for r in rejections], schema=schema)
    table = pl.concat([old, new]).unique(subset=["name", "size", "mtime_ns"], keep="last", maintain_order=True)
    write_parquet_atomic(table, path)
    return table
