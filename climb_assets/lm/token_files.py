"""Tokenize once, per raw shard, into memory-mapped token files (the nanoGPT / datatrove layout).

Layout, under ``lake/tokens/<tokenizer sha256[:16]>/``:

- ``<shard>.bin``  every token of the shard's documents, concatenated in raw-shard row order (uint16 when the
  vocabulary fits, else uint32);
- ``<shard>.idx``  an ``.npy`` int64 array of ``rows + 1`` offsets: row ``r``'s tokens are ``bin[idx[r]:idx[r+1]]``;
- ``<shard>.json`` written last, so its presence means the pair is complete: the raw shard's sha256 (and size/mtime,
  so an unchanged shard is not re-hashed), the dtype, the row and token counts.

Every row of a raw shard is tokenized, not only the rows kept by the quality filter or placed in a super-cluster:
membership changes with every re-clustering or threshold change, a shard's text does not, so token files keyed by
(tokenizer hash, raw shard content) never go stale and a new shard costs only its own tokenization. Which document
belongs to which super-cluster is joined at load time (``group_index``) from ``lake/super_clusters/documents.parquet``
against the raw shards' ``doc_id`` column: ids and ints only, never text or tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.lake import raw_shards_dir, tokens_root
from climb_assets.lm.tokenizer import BPETokenizer, ByteTokenizer, TextTokenizer
from climb_assets.storage import atomic_path, file_sha256, lake_file, write_json_atomic

ENCODE_BATCH = 1024  # documents per encode_batch call: bounds the Python token lists alive at once


def tokenizer_sha256(tokenizer: TextTokenizer) -> str:
    """sha256 of the tokenizer's full definition: a retrained tokenizer never reuses another's token files."""
    if isinstance(tokenizer, BPETokenizer):
        spec = tokenizer._tok.to_str()
    elif isinstance(tokenizer, ByteTokenizer):
        spec = f"bytes:{tokenizer.vocab_size}:{tokenizer.eot_id}"
    else:
        raise TypeError(f"no content hash for tokenizer type {type(tokenizer).__name__}")
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


def token_dir(home: ClimbHome, tokenizer: TextTokenizer) -> Path:
    return tokens_root(home) / tokenizer_sha256(tokenizer)[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _meta_path(directory: Path, shard: str) -> Path:
    return lake_file(directory, shard, ".json")


def is_current(raw_path: Path, directory: Path) -> bool:
    """Token files exist for exactly this raw shard's bytes (re-hashed only when size or mtime changed)."""
    meta_path = _meta_path(directory, raw_path.stem)
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    stat = raw_path.stat()
    if (meta["raw_size"], meta["raw_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
        return True
    if meta["raw_sha256"] != file_sha256(raw_path):
        return False
    write_json_atomic(meta | {"raw_size": stat.st_size, "raw_mtime_ns": stat.st_mtime_ns}, meta_path)  # touched only
    return True


def read_settled(path: Path) -> tuple[bytes, os.stat_result]:
    """A file's bytes and the stat that describes them: read between two equal stats, so a shard replaced while it
    is read is never certified by the other version's size, time or hash."""
    before = path.stat()
    data = path.read_bytes()
    after = path.stat()
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
        raise RuntimeError(f"{path} changed while it was read for tokenization: materialize it again")
    return data, after


def tokenize_shard(raw_path: Path, tokenizer: TextTokenizer, directory: Path) -> dict:
    """Write ``<shard>.bin/.idx/.json`` for one raw shard; memory is one shard's bytes and text plus one encode
    batch. The meta's hash, size and time are those of the bytes tokenized."""
    shard = raw_path.stem
    dtype = token_dtype(tokenizer.vocab_size)
    data, stat = read_settled(raw_path)
    texts = pl.read_parquet(io.BytesIO(data), columns=["text"])["text"]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    with atomic_path(lake_file(directory, shard, ".bin")) as tmp, open(tmp, "wb") as out:
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = [t or "" for t in texts.slice(start, ENCODE_BATCH).to_list()]
            encoded = tokenizer.encode_batch(batch)
            lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
            offsets[start + 1 : start + 1 + len(encoded)] = offsets[start] + np.cumsum(lengths)
            if encoded and lengths.sum():
                np.concatenate([np.asarray(e, dtype=dtype) for e in encoded]).tofile(out)
    with atomic_path(lake_file(directory, shard, ".idx")) as tmp, open(tmp, "wb") as out:
        np.save(out, offsets)
    meta = {
        "shard": shard,
        "raw_sha256": hashlib.sha256(data).hexdigest(),  # the very bytes tokenized, not the file as it is now
        "raw_size": stat.st_size,
        "raw_mtime_ns": stat.st_mtime_ns,
        "dtype": dtype.name,
        "rows": len(texts),
        "tokens": int(offsets[-1]),
        "vocab_size": tokenizer.vocab_size,
    }
    write_json_atomic(meta, _meta_path(directory, shard))
    return meta


def shard_token_meta(directory: Path, shard: str) -> dict:
    """What a shard's token files hold (rows, tokens, dtype) and which raw bytes they were made from."""
    return json.loads(_meta_path(directory, shard).read_text())


def ensure_shard_tokens(home: ClimbHome, tokenizer: TextTokenizer, shard: str, directory: Path) -> tuple[dict, bool]:
    """One raw shard's token files in ``directory`` (``token_dir`` of this tokenizer, computed once by the caller),
    made only if missing or stale; returns (meta, tokenized now)."""
    raw_path = raw_shards_dir(home) / f"{shard}.parquet"
    if not raw_path.is_file():
        raise FileNotFoundError(f"raw shard {shard!r} is not in the lake ({raw_path}): ingest it first")
    directory.mkdir(parents=True, exist_ok=True)
    if is_current(raw_path, directory):
        return shard_token_meta(directory, shard), False
    return tokenize_shard(raw_path, tokenizer, directory), True


def untokenized_shards(home: ClimbHome, directory: Path) -> list[str]:
    """The raw shards without current token files in ``directory``."""
    return [path.stem for path in sorted(raw_shards_dir(home).glob("*.parquet")) if not is_current(path, directory)]


def ensure_token_files(home: ClimbHome, tokenizer: TextTokenizer) -> dict[str, list[str]]:
    """Tokenize only the raw shards without current token files for this tokenizer; returns what was done.

    Safe to call from several processes at once: each writes complete files and renames them into place.
    """
    directory = token_dir(home, tokenizer)
    done: dict[str, list[str]] = {"tokenized": [], "reused": []}
    for raw_path in sorted(raw_shards_dir(home).glob("*.parquet")):
        _, tokenized = ensure_shard_tokens(home, tokenizer, raw_path.stem, directory)
        done["tokenized" if tokenized else "reused"].append(raw_path.stem)
    return done


@dataclass
class TokenStore:
    """Memory-mapped token files of every raw shard plus text look-ups by (shard, row), opened lazily."""

    directory: Path
    raw_dir: Path
    shard_names: list[str]
    _tokens: dict[int, np.memmap] = field(default_factory=dict, repr=False)
    _offsets: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def _open(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._tokens:
            name = self.shard_names[shard]
            meta = shard_token_meta(self.directory, name)
            offsets = np.load(lake_file(self.directory, name, ".idx"), mmap_mode="r")
            bin_path = lake_file(self.directory, name, ".bin")
            self._tokens[shard] = (
                np.memmap(bin_path, dtype=meta["dtype"], mode="r") if meta["tokens"] else np.zeros(0, meta["dtype"])
            )
            self._offsets[shard] = offsets
        return self._tokens[shard], self._offsets[shard]

    def row_lengths(self, shard: int) -> np.ndarray:
        _, offsets = self._open(shard)
        return np.diff(offsets)

    def tokens(self, shard: int, row: int) -> np.ndarray:
        """One document's tokens: a view into the memory map (no copy until the packer concatenates)."""
        tokens, offsets = self._open(shard)
        return tokens[offsets[row] : offsets[row + 1]]

    def records(self, shards: np.ndarray, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """(doc_ids, texts) for the given (shard, row) pairs, in order; reads each raw shard touched once."""
        doc_ids: list[str | None] = [None] * len(rows)
        texts: list[str | None] = [None] * len(rows)
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            wanted = pl.DataFrame({"row": np.asarray(rows[positions], dtype=np.int64), "pos": positions})
            raw = pl.scan_parquet(self.raw_dir / f"{self.shard_names[int(shard)]}.parquet").select("doc_id", "text")
            raw = raw.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
            found = wanted.lazy().join(raw, on="row", how="left").collect()
            for pos, doc_id, text in found.select("pos", "doc_id", "text").iter_rows():
                doc_ids[pos], texts[pos] = doc_id, text
        return doc_ids, texts  # type: ignore[return-value]


@dataclass(frozen=True)
class GroupDocs:
    """One super-cluster's documents as (raw shard index, row) pairs and their token counts, sorted by doc_id."""

    shard: np.ndarray
    row: np.ndarray
    n_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def group_index(store: TokenStore, members: pl.DataFrame) -> dict[int, GroupDocs]:
    """Join super-cluster membership (doc_id, super_cluster_id) to (shard, row) through the raw shards' doc ids.

    Built per process rather than stored: it is ids and ints only (tens of bytes per document), and building it from
    the current membership file means a re-clustering can never be served a stale index.
    """
    located = pl.concat(
        [
            pl.read_parquet(store.raw_dir / f"{name}.parquet", columns=["doc_id"])
            .with_row_index("row")
            .with_columns(pl.col("row").cast(pl.Int64), shard=pl.lit(i, dtype=pl.Int32))
            for i, name in enumerate(store.shard_names)
        ]
    ) if store.shard_names else pl.DataFrame(schema={"row": pl.Int64, "doc_id": pl.String, "shard": pl.Int32})
    docs = members.join(located, on="doc_id", how="inner").sort("super_cluster_id", "doc_id")
    if docs.height != members.height:
        raise ValueError(f"{members.height - docs.height} super-cluster documents are missing from raw_shards")
    lengths = {i: store.row_lengths(i) for i in range(len(store.shard_names))}
    out: dict[int, GroupDocs] = {}
    for (g,), part in docs.group_by(["super_cluster_id"], maintain_order=True):
        shard = part["shard"].to_numpy()
        row = part["row"].to_numpy()
        n_tokens = np.empty(len(row), dtype=np.int64)
        for s in np.unique(shard):
            at = shard == s
            n_tokens[at] = lengths[int(s)][row[at]]
        out[int(g)] = GroupDocs(shard, row, n_tokens)
    return out


def cached_group_index(store: TokenStore, members_path: Path) -> dict[int, GroupDocs]:
    """``group_index`` built once per (membership file, raw shards, tokenizer) and stored as int arrays.

    The key hashes the membership file's bytes and every shard's name and raw sha256 (rows are positions in those
    bytes); the tokenizer is the directory. Later processes (every proxy step) load ~32 bytes per kept document
    instead of joining every document id again.
    """
    key = hashlib.sha256(file_sha256(members_path).encode())
    for name in store.shard_names:
        key.update(f"{name}:{shard_token_meta(store.directory, name)['raw_sha256']};".encode())
    path = store.directory / f"index-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        arrays = np.load(path)
        bounds = np.flatnonzero(np.diff(arrays["group"])) + 1
        parts = zip(*(np.split(arrays[k], bounds) for k in ("group", "shard", "row", "n_tokens")))
        return {int(g[0]): GroupDocs(shard, row, n) for g, shard, row, n in parts if len(g)}
    members = pl.read_parquet(members_path, columns=["doc_id", "super_cluster_id"]).drop_nulls()
    index = group_index(store, members)
    groups = sorted(index)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(
            out,
            group=np.concatenate([np.full(len(index[g]), g, dtype=np.int64) for g in groups] or [np.zeros(0, np.int64)]),
            **{k: np.concatenate([getattr(index[g], k) for g in groups] or [np.zeros(0, np.int64)])
               for k in ("shard", "row", "n_tokens")},
        )  # fmt: skip
    return index


def open_store(home: ClimbHome, tokenizer: TextTokenizer) -> TokenStore:
    """Make sure every raw shard has current token files for ``tokenizer``, then open them."""
    ensure_token_files(home, tokenizer)
    names = sorted(p.stem for p in raw_shards_dir(home).glob("*.parquet"))
    return TokenStore(token_dir(home, tokenizer), raw_shards_dir(home), names)
