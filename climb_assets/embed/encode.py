"""Turn texts into the lake's embedding format: L2-normalised float16 vectors stored per shard as ``.npz``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from climb_assets.embed.models import EmbeddingModel
from climb_assets.storage import atomic_path


@dataclass(frozen=True)
class Embeddings:
    ids: np.ndarray  # unicode, (n,)
    vectors: np.ndarray  # float16, (n, d), rows L2-normalised
    model: str


def embed_texts(model: EmbeddingModel, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` in input order as L2-normalised float16 rows; a text the model cannot embed is an error."""
    vectors, empty = embed_documents(model, texts, batch_size)
    if empty.size:
        raise ValueError(f"{model.name} produced {empty.size} zero or non-finite vectors (rows {empty[:10].tolist()})")
    return vectors


def embed_documents(model: EmbeddingModel, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float16 rows for the texts the model can embed, and the positions of those it cannot.

    A static model returns a zero vector for a text with no token in its vocabulary: such a document has no place
    in the semantic space, so the caller quarantines it instead of failing the whole shard.

    Texts are encoded in length order so each batch pads to a similar length (a transformer's cost is set by
    the longest text in the batch), then put back in the caller's order. The order of equal-length texts is
    stable, so the same input always yields the same batches and the same bits.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise TypeError(f"texts must be str; positions {bad[:10]} are not")
    if not texts:
        return np.zeros((0, model.dim), dtype=np.float16), np.zeros(0, dtype=np.int64)
    order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    out = np.empty((len(texts), model.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = model.encode([texts[i] for i in rows], batch_size=len(rows))
    # Unit rows, so cosine similarity is a dot product and k-means distances are comparable across docs.
    norms = np.linalg.norm(out, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    return (out[usable] / norms[usable, None]).astype(np.float16), np.flatnonzero(~usable)


def write_embeddings(path: Path, ids: list[str] | np.ndarray, vectors: np.ndarray, model_name: str) -> Path:
    """Write one shard's embeddings atomically (``ids``, float16 ``vectors``, ``model``) after checking them."""
    ids_arr = np.asarray(ids, dtype=str)
    if vectors.ndim != 2 or ids_arr.ndim != 1 or len(ids_arr) != len(vectors):
        raise ValueError(f"need one id per vector row: {ids_arr.shape} ids vs {vectors.shape} vectors")
    if len(np.unique(ids_arr)) != len(ids_arr):
        raise ValueError("duplicate doc ids in embeddings")
    if not np.isfinite(vectors).all():
        raise ValueError("non-finite values in embeddings")
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez must not rename it
        np.savez(handle, ids=ids_arr, vectors=vectors.astype(np.float16), model=np.asarray(model_name))
    return Path(path)


def read_embeddings(path: Path) -> Embeddings:
    with np.load(Path(path), allow_pickle=False) as data:
        return Embeddings(ids=data["ids"], vectors=data["vectors"], model=str(data["model"]))
