"""Document embeddings: offline models (MiniLM, static distilled MiniLM, any sentence-transformers model)."""

from climb_assets.embed.encode import (
    Embeddings,
    embed_documents,
    embed_texts,
    read_embeddings,
    write_embeddings,
)
from climb_assets.embed.models import (
    DEFAULT_MODEL,
    EmbeddingModel,
    build_static_model,
    bundled_minilm_path,
    default_device,
    load_model,
    static_build_info,
)

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingModel",
    "Embeddings",
    "build_static_model",
    "bundled_minilm_path",
    "default_device",
    "embed_documents",
    "embed_texts",
    "load_model",
    "read_embeddings",
    "static_build_info",
    "write_embeddings",
]
