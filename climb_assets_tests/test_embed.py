"""Embedding models load offline from installed packages; embed_texts is deterministic, normalised, in order."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from climb_assets.embed import (
    build_static_model,
    bundled_minilm_path,
    embed_documents,
    embed_texts,
    load_model,
    read_embeddings,
    static_build_info,
    write_embeddings,
)

TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on a rug in the living room, curled up next to the warm fireplace.",
    "Stock markets fell sharply today as investors worried about rising interest rates.",
    "def add(a, b):\n    return a + b",
    "To be, or not to be, that is the question.",
    "Shares tumbled on Wall Street after the central bank signalled more rate hikes.",
    "ok",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu", max_seq_length=128)


@pytest.fixture(scope="session")
def static_dir(tmp_path_factory):
    """Distil once per test session (the slow part: one MiniLM forward pass per vocabulary token)."""
    cache = tmp_path_factory.mktemp("models") / "static-minilm"
    started = time.perf_counter()
    build_static_model(cache, device="cpu")
    print(f"\nstatic model distilled in {time.perf_counter() - started:.1f}s")
    return cache


def test_bundled_minilm_ships_in_the_wheel():
    assert (bundled_minilm_path() / "model.safetensors").stat().st_size > 10_000_000


def test_model_is_loaded_once_per_process(minilm):
    assert load_model("minilm", device="cpu", max_seq_length=128) is minilm
    assert load_model("minilm", device="cpu", max_seq_length=64) is not minilm
    assert (minilm.name, minilm.dim, minilm.device) == ("minilm", 384, "cpu")


def test_embeddings_are_normalised_float16_and_deterministic(minilm):
    vectors = embed_texts(minilm, TEXTS, batch_size=3)
    assert vectors.dtype == np.float16 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_array_equal(vectors, embed_texts(minilm, TEXTS, batch_size=3))


def test_length_sorting_is_undone(minilm):
    """Each row must be the embedding of the text at that position, whatever order the batches ran in."""
    vectors = embed_texts(minilm, TEXTS, batch_size=2).astype(np.float32)
    one_by_one = np.vstack([minilm.encode([t], batch_size=1) for t in TEXTS])
    one_by_one /= np.linalg.norm(one_by_one, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, one_by_one, atol=3e-3)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = embed_texts(minilm, [TEXTS[i] for i in perm], batch_size=2).astype(np.float32)
    np.testing.assert_allclose(shuffled, vectors[perm], atol=3e-3)


def test_embeddings_carry_meaning(minilm):
    v = embed_texts(minilm, TEXTS)
    assert cosine(v[0], v[1]) > cosine(v[0], v[2])  # cats are closer to cats than to stock markets
    assert cosine(v[2], v[5]) > cosine(v[2], v[4])


def test_bad_texts_raise(minilm):
    with pytest.raises(TypeError, match="positions \\[1\\]"):
        embed_texts(minilm, ["fine", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(minilm, ["fine"], batch_size=0)
    assert embed_texts(minilm, []).shape == (0, 384)


def test_static_model_needs_a_cache_dir():
    with pytest.raises(ValueError, match="cache_dir"):
        load_model("static")


def test_static_model_builds_offline_from_bundled_minilm_and_embeds(static_dir):
    info = static_build_info(static_dir)
    assert info["dim"] == 256 and info["distill_seconds"] > 0
    stamp = (static_dir / "climb_static.json").stat().st_mtime_ns
    assert build_static_model(static_dir) == static_dir  # cached: not rebuilt
    assert (static_dir / "climb_static.json").stat().st_mtime_ns == stamp
    assert not [p for p in static_dir.parent.iterdir() if p.name != static_dir.name]  # no temp leftovers

    static = load_model("static", cache_dir=static_dir)
    assert load_model("static", cache_dir=static_dir) is static and static.dim == 256
    vectors = embed_texts(static, TEXTS, batch_size=4)
    assert vectors.dtype == np.float16 and vectors.shape == (len(TEXTS), 256)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_array_equal(vectors, embed_texts(static, list(TEXTS), batch_size=3))
    assert cosine(vectors[2], vectors[5]) > cosine(vectors[2], vectors[0])

    # a text with no token in the static vocabulary has no vector: reported by position, not a failed shard
    hieroglyphs = "𓀀𓀁𓀂 𓀃"
    kept, empty = embed_documents(static, [TEXTS[0], hieroglyphs, TEXTS[2]], batch_size=2)
    assert empty.tolist() == [1] and kept.shape == (2, 256)
    np.testing.assert_array_equal(kept, embed_texts(static, [TEXTS[0], TEXTS[2]], batch_size=2))
    with pytest.raises(ValueError, match="zero or non-finite"):
        embed_texts(static, [hieroglyphs])


def test_embeddings_file_round_trip(tmp_path, minilm):
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    vectors = embed_texts(minilm, TEXTS)
    path = write_embeddings(tmp_path / "shard-1.npz", ids, vectors, "minilm")
    assert [p.name for p in tmp_path.iterdir()] == ["shard-1.npz"]
    loaded = read_embeddings(path)
    assert loaded.ids.tolist() == ids and loaded.model == "minilm"
    assert loaded.vectors.dtype == np.float16
    np.testing.assert_array_equal(loaded.vectors, vectors)


def test_write_embeddings_rejects_inconsistent_input(tmp_path):
    vectors = np.ones((2, 4), dtype=np.float16)
    with pytest.raises(ValueError, match="one id per vector"):
        write_embeddings(tmp_path / "x.npz", ["a"], vectors, "m")
    with pytest.raises(ValueError, match="duplicate"):
        write_embeddings(tmp_path / "x.npz", ["a", "a"], vectors, "m")
    with pytest.raises(ValueError, match="non-finite"):
        write_embeddings(tmp_path / "x.npz", ["a", "b"], np.array([[np.inf] * 4, [1.0] * 4]), "m")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_match_cpu(minilm):
    gpu = load_model("minilm", device="cuda", max_seq_length=128)
    assert gpu.device == "cuda"
    np.testing.assert_allclose(
        embed_texts(gpu, TEXTS).astype(np.float32), embed_texts(minilm, TEXTS).astype(np.float32), atol=1e-2
    )
