"""Reading, validating, normalising and de-duplicating one crawl shard.

Plain functions (no Dagster) so tests can call them directly. Every input row ends up in exactly one of three
places: accepted documents, the quarantine (with a reason), or the duplicates table (with what it duplicates, the
kind, ``exact`` or ``fuzzy``, and the similarity). Two steps: ``read_shard`` validates and removes exact duplicates,
``remove_near_duplicates`` removes near-duplicates from what it accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from climb_assets.ingest.near_dedup import (
    EarlierCandidates,
    EarlierTexts,
    FuzzySettings,
    find_near_duplicates,
)
from climb_assets.storage import file_sha256

SHARD_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")

_TOKEN_PATTERN = r"\w+|[^\w\s]"
_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


class UnreadableShardError(Exception):
    """The whole file cannot be read (truncated gzip, not Parquet, ...): nothing is written for it."""


@dataclass(frozen=True)
class IngestSettings:
    text_field: str = "text"
    id_field: str = "id"
    kind_field: str = "kind"
    min_chars: int = 20
    max_chars: int = 200_000
    quarantine_value_chars: int = 500
    fuzzy: FuzzySettings | None = FuzzySettings()  # None: exact duplicates only


@dataclass
class RawRow:
    row_number: int
    raw: str
    record: dict | None = None
    error: str | None = None


@dataclass
class ShardResult:
    documents: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates: pl.DataFrame
    rows_read: int
    file_sha256: str
    reasons: dict[str, int] = field(default_factory=dict)
    bands: pl.DataFrame | None = None  # MinHash bands of the accepted documents (None: fuzzy dedup off or not run)

    def save(self, directory: Path) -> None:
        """Write everything but the bands into ``directory`` (an ingest's staging between its two steps)."""
        directory.mkdir(parents=True)
        for name in ("documents", "quarantine", "duplicates"):
            getattr(self, name).write_parquet(directory / f"{name}.parquet")
        summary = {"rows_read": self.rows_read, "file_sha256": self.file_sha256, "reasons": self.reasons}
        (directory / "summary.json").write_text(json.dumps(summary))

    @classmethod
    def load(cls, directory: Path) -> "ShardResult":
        frames = {name: pl.read_parquet(directory / f"{name}.parquet") for name in ("documents", "quarantine", "duplicates")}
        return cls(**frames, **json.loads((directory / "summary.json").read_text()))


def shard_suffix(name: str) -> str | None:
    """The shard format a file name says it has (case-insensitive: crawlers write ``.JSONL`` too)."""
    return next((s for s in SHARD_SUFFIXES if name.lower().endswith(s)), None)


def normalize_text(text: str) -> str:
    """Unicode NFC, unified newlines, runs of spaces/tabs collapsed, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def text_hash(text: str) -> str:
    """sha256 of normalised text: the exact-duplicate key (column ``content_hash`` in the lake)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def _read_jsonl_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if shard_suffix(path.name) != ".jsonl.gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableShardError(f"{path.name}: not a readable gzip file ({exc})") from exc


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    lines = _read_jsonl_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start a row
    for number, line in enumerate(lines):
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRow(number, line.decode("utf-8", errors="replace"), error=f"invalid_utf8: {exc.reason}")
            continue
        if not decoded.strip():
            yield RawRow(number, decoded, error="blank_line")
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as exc:
            yield RawRow(number, decoded, error=f"invalid_json: {exc.msg}")
            continue
        if not isinstance(record, dict):
            yield RawRow(number, decoded, error="not_a_json_object")
            continue
        yield RawRow(number, decoded, record=record)


def _iter_parquet(path: Path, settings: IngestSettings) -> Iterator[RawRow]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableShardError(f"{path.name}: not a readable Parquet file ({exc})") from exc
    schema_error = None
    if settings.text_field not in table.column_names:
        schema_error = f"wrong_parquet_schema: no column {settings.text_field!r}"
    elif not pa.types.is_string(table.schema.field(settings.text_field).type) and not pa.types.is_large_string(
        table.schema.field(settings.text_field).type
    ):
        schema_error = f"wrong_parquet_schema: column {settings.text_field!r} is {table.schema.field(settings.text_field).type}"
    for number, record in enumerate(table.to_pylist()):
        raw = json.dumps(record, default=str, ensure_ascii=False)
        yield RawRow(number, raw, record=None if schema_error else record, error=schema_error)


def read_shard_rows(path: Path, settings: IngestSettings) -> Iterator[RawRow]:
    suffix = shard_suffix(path.name)
    if suffix == ".parquet":
        return _iter_parquet(path, settings)
    if suffix in (".jsonl", ".jsonl.gz"):
        return _iter_jsonl(path)
    raise UnreadableShardError(f"{path.name}: unsupported file type (expected one of {', '.join(SHARD_SUFFIXES)})")


def count_shard_rows(path: Path, settings: IngestSettings) -> int:
    """Rows in a landed file, counted independently of validation (for the conservation check)."""
    if shard_suffix(path.name) == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    data = _read_jsonl_bytes(path)
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def _validate_text(record: dict, settings: IngestSettings) -> tuple[str | None, str | None]:
    if settings.text_field not in record:
        return None, f"missing_text: no field {settings.text_field!r}"
    value = record[settings.text_field]
    if not isinstance(value, str):
        return None, f"non_string_text: {type(value).__name__}"
    text = normalize_text(value)
    if not text:
        return None, "empty_text"
    if len(text) < settings.min_chars:
        return None, f"too_short: {len(text)} < {settings.min_chars} chars"
    if len(text) > settings.max_chars:
        return None, f"too_long: {len(text)} > {settings.max_chars} chars"
    return text, None


def _document_id(record: dict, text_hash: str, settings: IngestSettings) -> tuple[str | None, str | None]:
    """The row's own id when it has one, else a content hash (stable across runs, unlike a row counter)."""
    own = record.get(settings.id_field)
    if own is None:
        return f"h{text_hash[:24]}", None
    if isinstance(own, bool) or not isinstance(own, (str, int)):
        return None, f"invalid_id: {type(own).__name__}"
    own = str(own).strip()
    return (own, None) if own else (None, "invalid_id: empty")


QUARANTINE_SCHEMA = {"shard": pl.String, "row_number": pl.Int64, "reason": pl.String, "raw_value": pl.String}
DUPLICATE_SCHEMA = {
    "shard": pl.String,
    "row_number": pl.Int64,
    "doc_id": pl.String,
    "content_hash": pl.String,
    "duplicate_of": pl.String,
    "duplicate_of_shard": pl.String,
    "kind": pl.String,
    "similarity": pl.Float64,
}
DOCUMENT_SCHEMA = {
    "doc_id": pl.String,
    "text": pl.String,
    "shard": pl.String,
    "row_number": pl.Int64,
    "n_chars": pl.Int64,
    "n_tokens": pl.Int64,
    "content_hash": pl.String,
    "source_kind": pl.String,
    "meta": pl.String,
}


SeenLookup = Callable[[set[str], set[str]], tuple[dict[str, tuple[str, str]], set[str]]]
"""(this shard's hashes, its ids) -> (hash -> (doc_id, shard) of the earlier copy, ids earlier shards already use)."""


def read_shard(path: Path, shard: str, settings: IngestSettings, seen: SeenLookup | None = None) -> ShardResult:
    """Validate, normalise and remove exact duplicates of one shard, against itself and earlier shards.

    Rows are validated first; then earlier shards are asked (``seen``) about this shard's hashes and ids only, so
    memory stays proportional to the shard however large the corpus is. Near-duplicates are the next step's
    (``remove_near_duplicates``).
    """
    documents, quarantine, duplicates = [], [], []
    candidates = []
    rows_read = 0
    for row in read_shard_rows(path, settings):
        rows_read += 1
        error = row.error
        text = None
        if error is None:
            text, error = _validate_text(row.record, settings)
        if error is None:
            digest = text_hash(text)
            doc_id, error = _document_id(row.record, digest, settings)
        if error is not None:
            quarantine.append((shard, row.row_number, error, _truncate(row.raw, settings.quarantine_value_chars)))
            continue
        candidates.append((row, text, digest, doc_id))
    seen_hashes, seen_ids = (
        seen({c[2] for c in candidates}, {c[3] for c in candidates}) if seen and candidates else ({}, set())
    )
    for row, text, digest, doc_id in candidates:
        if digest in seen_hashes:
            first_id, first_shard = seen_hashes[digest]
            duplicates.append((shard, row.row_number, doc_id, digest, first_id, first_shard, "exact", 1.0))
            continue
        if doc_id in seen_ids:
            reason = f"duplicate_id: {doc_id!r} already names a different text"
            quarantine.append((shard, row.row_number, reason, _truncate(row.raw, settings.quarantine_value_chars)))
            continue
        seen_hashes[digest] = (doc_id, shard)
        seen_ids.add(doc_id)
        kind = row.record.get(settings.kind_field)
        extra = {k: v for k, v in row.record.items() if k not in {settings.text_field, settings.id_field, settings.kind_field}}
        documents.append(
            (
                doc_id,
                text,
                shard,
                row.row_number,
                len(text),
                digest,
                kind if isinstance(kind, str) else None,
                json.dumps(extra, default=str, ensure_ascii=False, sort_keys=True) if extra else None,
            )
        )
    doc_frame = pl.DataFrame(
        documents,
        schema={k: v for k, v in DOCUMENT_SCHEMA.items() if k != "n_tokens"},
        orient="row",
    ).with_columns(n_tokens=pl.col("text").str.count_matches(_TOKEN_PATTERN).cast(pl.Int64)).select(list(DOCUMENT_SCHEMA))
    quarantine_frame = pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA, orient="row").sort("row_number")
    reasons = (
        quarantine_frame.group_by(pl.col("reason").str.split(":").list.first().alias("reason"))
        .len()
        .sort("reason")
        .iter_rows()
    )
    return ShardResult(
        documents=doc_frame,
        quarantine=quarantine_frame,
        duplicates=pl.DataFrame(duplicates, schema=DUPLICATE_SCHEMA, orient="row").sort("row_number"),
        rows_read=rows_read,
        file_sha256=file_sha256(path),
        reasons=dict(reasons),
    )


def remove_near_duplicates(
    result: ShardResult,
    shard: str,
    fuzzy: FuzzySettings,
    earlier_candidates: EarlierCandidates | None = None,
    earlier_texts: EarlierTexts | None = None,
) -> ShardResult:
    """``result`` without the documents that near-duplicate an earlier one (MinHash-LSH, ``near_dedup.py``); they
    join its duplicates, and its kept documents' bands come with it for the index.

    An exact copy of a removed document names the kept one instead (the same text, so the same similarity): every
    duplicate points at a document that stayed.
    """
    docs = result.documents
    near, bands = find_near_duplicates(
        shard, docs["doc_id"].to_list(), docs["text"].to_list(), fuzzy, earlier_candidates, earlier_texts
    )
    positions = sorted(near)
    found = pl.DataFrame({
        "position": positions,
        "kept": [near[i].duplicate_of for i in positions],
        "kept_shard": [near[i].duplicate_of_shard for i in positions],
        "kept_similarity": [near[i].similarity for i in positions],
    }, schema={"position": pl.Int64, "kept": pl.String, "kept_shard": pl.String, "kept_similarity": pl.Float64})  # fmt: skip
    removed = docs.with_row_index("position").with_columns(pl.col("position").cast(pl.Int64)).join(found, on="position")
    fuzzy_rows = removed.select(
        "shard", "row_number", "doc_id", "content_hash", pl.col("kept").alias("duplicate_of"),
        pl.col("kept_shard").alias("duplicate_of_shard"), pl.lit("fuzzy").alias("kind"),
        pl.col("kept_similarity").alias("similarity"),
    )  # fmt: skip
    repointed = (
        result.duplicates.join(
            removed.select(pl.col("doc_id").alias("duplicate_of"), pl.col("shard").alias("duplicate_of_shard"),
                           "kept", "kept_shard", "kept_similarity"),
            on=["duplicate_of", "duplicate_of_shard"], how="left",
        )
        .with_columns(
            duplicate_of=pl.coalesce("kept", "duplicate_of"),
            duplicate_of_shard=pl.coalesce("kept_shard", "duplicate_of_shard"),
            kind=pl.when(pl.col("kept").is_null()).then("kind").otherwise(pl.lit("fuzzy")),
            similarity=pl.coalesce("kept_similarity", "similarity"),
        )
        .select(list(DUPLICATE_SCHEMA))
    )  # fmt: skip
    return ShardResult(
        documents=docs.filter(~pl.int_range(pl.len()).is_in(positions)),
        quarantine=result.quarantine,
        duplicates=pl.concat([repointed, fuzzy_rows]).sort("row_number"),
        rows_read=result.rows_read,
        file_sha256=result.file_sha256,
        reasons=result.reasons,
        bands=bands,
    )
