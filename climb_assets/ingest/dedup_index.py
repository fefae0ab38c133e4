"""An on-disk index of accepted documents' content hashes and ids, so a new shard is de-duplicated without loading
every earlier shard into memory.

One DuckDB file, ``lake/dedup_index/index.duckdb``: table ``seen(content_hash, doc_id, shard)`` for exact duplicates
and ``minhash_bands(settings, shard, doc_id, band, bucket)`` for near-duplicates (``near_dedup.py``; ``settings`` is
the MinHash settings' key, so other settings never read stale bands), with ``minhash_shards`` saying which shards
have bands under which settings and ``seen_shards`` which shards have hashes (so neither question, nor the first
ingestion of a shard, scans the big tables). A shard is checked
with a join on disk against only its own hashes and ids, restricted to the shards registered before it, so memory
is proportional to the shard and a re-run of shard N after later shards landed gives the same answer. One writer at
a time: ``raw_shards`` runs in the single-slot ``lake_writer`` pool. Replacing a shard's rows is one transaction
(delete + insert), so an update is atomic and a re-run is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb
import polars as pl

from climb_assets.ingest.near_dedup import CANDIDATES_SCHEMA, Bander, FuzzySettings

SEEN_SCHEMA = {"content_hash": pl.String, "doc_id": pl.String, "shard": pl.String}
# The band join streams the table: a bigger buffer only caches it, so memory would grow with the corpus.
INDEX_MEMORY_LIMIT = "64MB"


class DedupIndex:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(str(path))
        self.connection.execute(f"SET memory_limit = '{INDEX_MEMORY_LIMIT}'")
        self.connection.execute(f"SET temp_directory = '{path.parent / 'spill'}'")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS seen (content_hash VARCHAR NOT NULL, doc_id VARCHAR NOT NULL, shard VARCHAR NOT NULL)"
        )
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS minhash_bands (settings VARCHAR NOT NULL, shard VARCHAR NOT NULL, "
            "doc_id VARCHAR NOT NULL, band SMALLINT NOT NULL, bucket BIGINT NOT NULL)"
        )
        self.connection.execute("CREATE TABLE IF NOT EXISTS minhash_shards (settings VARCHAR NOT NULL, shard VARCHAR NOT NULL)")
        # an index written before this table existed fills it once from ``seen``
        self.connection.execute("CREATE TABLE IF NOT EXISTS seen_shards AS SELECT DISTINCT shard FROM seen")

    def __enter__(self) -> "DedupIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def indexed_shards(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT shard FROM seen_shards").fetchall()}

    def banded_shards(self, fuzzy: FuzzySettings) -> set[str]:
        rows = self.connection.execute("SELECT shard FROM minhash_shards WHERE settings = ?", [fuzzy.index_key])
        return {row[0] for row in rows.fetchall()}

    def backfill(self, earlier: Iterable[str], documents_path: Callable[[str], Path], fuzzy: FuzzySettings | None = None) -> None:
        """Index earlier shards ingested before the index (or these MinHash settings) existed: once per shard."""
        indexed = self.indexed_shards()
        banded = self.banded_shards(fuzzy) if fuzzy else set()
        for shard in earlier:
            path = documents_path(shard)
            if not path.exists():
                continue
            if shard not in indexed:
                self._replace_seen(shard, pl.read_parquet(path, columns=list(SEEN_SCHEMA)))
            if fuzzy and shard not in banded:
                docs = pl.read_parquet(path, columns=["doc_id", "text"])
                self._replace_bands(shard, Bander(fuzzy).bands_frame(docs["doc_id"], docs["text"]), fuzzy)

    def replace(
        self, shard: str, accepted: pl.DataFrame, bands: pl.DataFrame | None = None, fuzzy: FuzzySettings | None = None
    ) -> None:
        """This shard's accepted (content_hash, doc_id) rows, and the bands of its documents, replace whatever it
        had: atomic and idempotent."""
        self._replace_seen(shard, accepted)
        if fuzzy is not None and bands is not None:
            self._replace_bands(shard, bands, fuzzy)

    def _transaction(self, statements: list[tuple[str, list]], incoming: pl.DataFrame) -> None:
        self.connection.execute("BEGIN TRANSACTION")
        try:
            self.connection.register("incoming", incoming.to_arrow())
            for sql, parameters in statements:
                self.connection.execute(sql, parameters)
            self.connection.unregister("incoming")
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    def _replace_seen(self, shard: str, accepted: pl.DataFrame) -> None:
        rows = accepted.select(pl.col("content_hash"), pl.col("doc_id"), pl.lit(shard).alias("shard"))
        deletes = [("DELETE FROM seen WHERE shard = ?", [shard]), ("DELETE FROM seen_shards WHERE shard = ?", [shard])]
        self._transaction(
            (deletes if shard in self.indexed_shards() else [])
            + [("INSERT INTO seen SELECT content_hash, doc_id, shard FROM incoming", []),
               ("INSERT INTO seen_shards VALUES (?)", [shard])],
            rows,
        )  # fmt: skip

    def _replace_bands(self, shard: str, bands: pl.DataFrame, fuzzy: FuzzySettings) -> None:
        key = fuzzy.index_key
        deletes = [("DELETE FROM minhash_bands WHERE settings = ? AND shard = ?", [key, shard]),
                   ("DELETE FROM minhash_shards WHERE settings = ? AND shard = ?", [key, shard])]  # fmt: skip
        self._transaction(
            (deletes if shard in self.banded_shards(fuzzy) else [])
            + [("INSERT INTO minhash_bands SELECT ?, ?, doc_id, band, bucket FROM incoming", [key, shard]),
               ("INSERT INTO minhash_shards VALUES (?, ?)", [key, shard])],
            bands,
        )  # fmt: skip

    def near_candidates(self, bands: pl.DataFrame, earlier: list[str], fuzzy: FuzzySettings) -> pl.DataFrame:
        """Accepted documents of ``earlier`` shards sharing a band with this shard's documents: per document the
        ``max_candidates`` sharing most bands. Only this shard's candidates come back."""
        if not earlier or not bands.height:
            return pl.DataFrame(schema=CANDIDATES_SCHEMA)
        con = self.connection
        con.register("earlier", pl.DataFrame({"shard": earlier, "position": range(len(earlier))}).to_arrow())
        con.register("incoming", bands.to_arrow())
        try:
            found = con.sql(
                """SELECT i.doc_id, b.doc_id AS other_id, b.shard AS other_shard, e.position, count(*) AS shared
                   FROM incoming i
                   JOIN minhash_bands b ON b.settings = ? AND b.band = i.band AND b.bucket = i.bucket
                   JOIN earlier e ON e.shard = b.shard
                   GROUP BY i.doc_id, b.doc_id, b.shard, e.position
                   QUALIFY row_number() OVER (PARTITION BY i.doc_id ORDER BY shared DESC, e.position, other_id) <= ?""",
                params=[fuzzy.index_key, fuzzy.max_candidates],
            ).pl()
        finally:
            con.unregister("earlier")
            con.unregister("incoming")
        return found.select(pl.col(name).cast(dtype) for name, dtype in CANDIDATES_SCHEMA.items())

    def lookup(
        self, hashes: Iterable[str], ids: Iterable[str], earlier: list[str]
    ) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """Among shards in ``earlier`` (registration order): hash -> (doc_id, first shard), and which ids are taken.

        Only this shard's own hashes and ids come back, so the result is bounded by the shard.
        """
        if not earlier:
            return {}, set()
        con = self.connection
        con.register("earlier", pl.DataFrame({"shard": earlier, "position": range(len(earlier))}).to_arrow())
        con.register("wanted_hashes", pl.DataFrame({"content_hash": list(set(hashes))}, schema={"content_hash": pl.String}).to_arrow())
        con.register("wanted_ids", pl.DataFrame({"doc_id": list(set(ids))}, schema={"doc_id": pl.String}).to_arrow())
        try:
            by_hash = con.execute(
                """SELECT s.content_hash, arg_min(s.doc_id, e.position), arg_min(s.shard, e.position)
                   FROM seen s JOIN earlier e USING (shard) SEMI JOIN wanted_hashes w USING (content_hash)
                   GROUP BY s.content_hash"""
            ).fetchall()
            taken = con.execute(
                "SELECT DISTINCT s.doc_id FROM seen s JOIN earlier e USING (shard) SEMI JOIN wanted_ids w USING (doc_id)"
            ).fetchall()
        finally:
            for name in ("earlier", "wanted_hashes", "wanted_ids"):
                con.unregister(name)
        return {digest: (doc_id, shard) for digest, doc_id, shard in by_hash}, {row[0] for row in taken}
