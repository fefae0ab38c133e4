"""An on-disk index of accepted documents' content hashes and ids, so a new shard is de-duplicated without loading
every earlier shard into memory.

One DuckDB file, ``lake/dedup_index/index.duckdb``, table ``seen(content_hash, doc_id, shard)``. A shard is checked
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

SEEN_SCHEMA = {"content_hash": pl.String, "doc_id": pl.String, "shard": pl.String}
INDEX_MEMORY_LIMIT = "256MB"


class DedupIndex:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(str(path))
        self.connection.execute(f"SET memory_limit = '{INDEX_MEMORY_LIMIT}'")
        self.connection.execute(f"SET temp_directory = '{path.parent / 'spill'}'")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS seen (content_hash VARCHAR NOT NULL, doc_id VARCHAR NOT NULL, shard VARCHAR NOT NULL)"
        )

    def __enter__(self) -> "DedupIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def indexed_shards(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT DISTINCT shard FROM seen").fetchall()}

    def backfill(self, earlier: Iterable[str], documents_path: Callable[[str], Path]) -> None:
        """Index earlier shards ingested before the index existed (a one-time cost per shard)."""
        indexed = self.indexed_shards()
        for shard in earlier:
            path = documents_path(shard)
            if shard not in indexed and path.exists():
                self.replace(shard, pl.read_parquet(path, columns=list(SEEN_SCHEMA)))

    def replace(self, shard: str, accepted: pl.DataFrame) -> None:
        """This shard's accepted (content_hash, doc_id) rows replace whatever it had: atomic and idempotent."""
        rows = accepted.select(pl.col("content_hash"), pl.col("doc_id"), pl.lit(shard).alias("shard"))
        self.connection.execute("BEGIN TRANSACTION")
        try:
            self.connection.execute("DELETE FROM seen WHERE shard = ?", [shard])
            self.connection.register("incoming", rows.to_arrow())
            self.connection.execute("INSERT INTO seen SELECT content_hash, doc_id, shard FROM incoming")
            self.connection.unregister("incoming")
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

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
