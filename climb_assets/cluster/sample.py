"""A bounded, deterministic sample of embeddings drawn across shards, reading only the sampled rows.

Each shard's embeddings are an uncompressed ``.npz`` (``np.savez``): the ``vectors`` member is a plain ``.npy``
stored verbatim inside the zip, so it can be memory-mapped at its offset. Indexing the map with the sampled rows
reads only their pages; the fit's memory is the sample (``k x max_points_per_centroid`` rows, as faiss would
subsample to), never the corpus.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def npz_member_memmap(path: Path, member: str = "vectors") -> np.memmap:
    """Read-only memory map of one array inside an uncompressed ``.npz``; only its header is read here."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{member}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {member} is compressed (np.savez_compressed); it cannot be memory-mapped")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(_LOCAL_HEADER)
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: no zip local header for {member}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        handle.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    if fortran_order:
        raise ValueError(f"{path}: {member} is Fortran-ordered")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def sample_size(n_docs: int, k: int, max_points_per_centroid: int) -> int:
    """faiss's own training-set bound: at most ``k x max_points_per_centroid`` points, never more than exist."""
    return min(n_docs, k * max_points_per_centroid)


def sample_rows(counts: Sequence[int], size: int, seed: int) -> list[np.ndarray]:
    """Sorted row indices per shard for a uniform sample of ``size`` documents over all shards (no replacement).

    Drawn over the global row range (Floyd's method in numpy: memory ~ ``size``, not the corpus) and split by
    shard; the same shards (in order), size and seed give the same rows.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= size <= total:
        raise ValueError(f"sample size {size} outside [0, {total}]")
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    cuts = np.searchsorted(chosen, bounds)
    return [chosen[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(counts))]


def shard_shape(path: Path) -> tuple[int, ...]:
    """``(rows, dims)`` of a shard's vectors, from its header alone."""
    return npz_member_memmap(path).shape


def draw_sample(paths: Sequence[Path], size: int, seed: int) -> tuple[np.ndarray, int]:
    """float32 ``(size, d)`` sample across ``paths`` (in the given order) and the number of rows read.

    One shard is mapped at a time and unmapped before the next, so resident memory is the sample plus the pages
    of one shard, whatever the number of shards.
    """
    shapes = [shard_shape(p) for p in paths]
    dims = {shape[1] for shape in shapes}
    if len(dims) != 1:
        raise ValueError(f"shards have different embedding dimensions: {sorted(dims)}")
    out = np.empty((size, dims.pop()), dtype=np.float32)
    filled = 0
    for path, rows in zip(paths, sample_rows([shape[0] for shape in shapes], size, seed), strict=True):
        if len(rows):
            vectors = npz_member_memmap(path)
            out[filled : filled + len(rows)] = vectors[rows]
            del vectors  # unmap: its touched pages leave this process's resident set
        filled += len(rows)
    return out, filled
