"""Fingerprints: the key of every cached unit of work is a hash of everything that determined its result.

A position (``it1-c000``) or a file name says nothing about the settings a result was made with; reusing a result
under such a key silently reports work that never ran. Every cached result (tokenizer, base checkpoint, proxy run,
proof run, ClimbMix) is therefore stored under ``fingerprint(ingredients)``, and the ingredients are written next to
it. Same fingerprint: reuse (a killed run resumes). Any difference: the work is done again under a new key; old
results stay on disk but are never read for new work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from climb_assets.storage import file_sha256

# The code's own version of each algorithm: bump one when a change alters what that step produces, so results made
# by older code are never reused for it. Also used as the Dagster code_version of the assets that run the step.
ALGORITHM_VERSIONS = {
    "tokenizer": "bpe-1",
    "proxy": "proxy-1",
    "predictor": "select-2",
    "candidates": "dirichlet-1",
    "climbmix": "climbmix-2",
    "proof": "proof-1",
}

FINGERPRINT_CHARS = 20


def _canonical(value: Any) -> Any:
    """JSON-stable form: floats by their exact repr (not rounded), dict keys sorted, tuples as lists."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot fingerprint a non-finite float: {value}")
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist())
    return value


def fingerprint(ingredients: dict[str, Any]) -> str:
    """A short, stable hash of ``ingredients`` (JSON with sorted keys, floats exact)."""
    blob = json.dumps(_canonical(ingredients), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def content_hash(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file's bytes (cached per process by path, size and mtime); None when there is no such file."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
