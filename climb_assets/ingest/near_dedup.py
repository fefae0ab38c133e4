"""Near-duplicate removal: MinHash-LSH over word n-grams, one shard at a time against everything registered earlier.

The defaults are datatrove's (5-grams of lower-cased words, 14 bands x 8 rows = 112 permutations, seed 1), with
one step datatrove skips: a pair that shares a band is only a candidate until the exact Jaccard similarity of the
two shingle sets reaches ``threshold`` (NeMo Curator's 0.8), so a bucket collision never removes a document.

Memory is proportional to the shard: the bands of accepted documents live in the de-duplication index
(``dedup_index.py``), a shard asks it for its own candidates only, and only those candidates' texts are read back.
Inside a shard, documents are compared in row order with the ones already kept, so registration order decides
which copy stays, as for exact duplicates, and re-ingesting a shard gives the same answer.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from datasketch import MinHash
from datasketch.hashfunc import sha1_hash32

_WORDS = re.compile(r"\w+")

BANDS_SCHEMA = {"doc_id": pl.String, "band": pl.Int16, "bucket": pl.Int64}
CANDIDATES_SCHEMA = {"doc_id": pl.String, "other_id": pl.String, "other_shard": pl.String, "position": pl.Int64}


@dataclass(frozen=True)
class FuzzySettings:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    threshold: float = 0.8
    seed: int = 1
    max_candidates: int = 64  # per document, the ones sharing most bands: a template family cannot blow up a shard

    def __post_init__(self) -> None:
        for name in ("ngram", "bands", "rows", "max_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"fuzzy_{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"fuzzy_threshold must be in (0, 1], got {self.threshold}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def index_key(self) -> str:
        """What the stored bands depend on (not the threshold, which only verification reads)."""
        return f"n{self.ngram}-b{self.bands}x{self.rows}-s{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


def shingles(text: str, ngram: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the lower-cased word n-grams (the whole text when it is shorter)."""
    words = _WORDS.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint32)
    grams = {" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))}
    return np.unique(np.fromiter((sha1_hash32(g.encode("utf-8")) for g in grams), dtype=np.uint32, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a) or not len(b):
        return 0.0
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


_THIS_SHARD = 1 << 62  # the shard being ingested comes after every earlier one


def _identity(value: int) -> int:
    return value


class Bander:
    """Signatures (datasketch MinHash over the shingle hashes) and their band keys."""

    def __init__(self, settings: FuzzySettings) -> None:
        self.settings = settings
        self._template = MinHash(num_perm=settings.num_perm, seed=settings.seed)

    def signature(self, shingle_hashes: np.ndarray) -> np.ndarray:
        minhash = MinHash(
            num_perm=self.settings.num_perm, seed=self.settings.seed, hashfunc=_identity,
            permutations=self._template.permutations, scheme=self._template.scheme,
        )  # fmt: skip
        minhash.update_batch(shingle_hashes.tolist())
        return np.asarray(minhash.hashvalues, dtype=np.uint64)

    def band_keys(self, shingle_hashes: np.ndarray) -> list[int]:
        """One signed 64-bit key per band (a hash of its rows), or none for a text without words."""
        if not len(shingle_hashes):
            return []
        bands = self.signature(shingle_hashes).reshape(self.settings.bands, self.settings.rows)
        return [int.from_bytes(hashlib.blake2b(b.tobytes(), digest_size=8).digest(), "little", signed=True) for b in bands]

    def bands_frame(self, doc_ids: Sequence[str], texts: Sequence[str]) -> pl.DataFrame:
        return keys_frame(doc_ids, [self.band_keys(shingles(text, self.settings.ngram)) for text in texts])


def keys_frame(doc_ids: Sequence[str], keys: Sequence[list[int]]) -> pl.DataFrame:
    """BANDS_SCHEMA rows: each document's band keys."""
    rows = [(doc_id, band, key) for doc_id, row in zip(doc_ids, keys, strict=True) for band, key in enumerate(row)]
    return pl.DataFrame(rows, schema=BANDS_SCHEMA, orient="row")


@dataclass(frozen=True)
class NearDuplicate:
    duplicate_of: str
    duplicate_of_shard: str
    similarity: float


EarlierCandidates = Callable[[pl.DataFrame], pl.DataFrame]
"""This shard's bands -> CANDIDATES_SCHEMA rows: accepted documents of earlier shards that share a band (position:
the earlier shard's registration order), at most ``max_candidates`` per document."""
EarlierTexts = Callable[[dict[str, list[str]]], dict[tuple[str, str], str]]
"""{earlier shard: doc ids} -> {(shard, doc id): text}, read in one pass."""


def find_near_duplicates(
    shard: str,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    settings: FuzzySettings,
    earlier_candidates: EarlierCandidates | None = None,
    earlier_texts: EarlierTexts | None = None,
) -> tuple[dict[int, NearDuplicate], pl.DataFrame]:
    """Which of this shard's documents (by position) near-duplicate an earlier one, and the bands of the kept ones.

    A document is a duplicate of the kept document it resembles most (ties: the earlier shard, then the earlier row)
    once their Jaccard similarity reaches the threshold.
    """
    bander = Bander(settings)
    shingle_sets = [shingles(text, settings.ngram) for text in texts]
    keys = [bander.band_keys(s) for s in shingle_sets]
    bands = keys_frame(doc_ids, keys)
    earlier: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    earlier_sets: dict[tuple[str, str], np.ndarray] = {}
    if earlier_candidates is not None and bands.height:
        found = earlier_candidates(bands)
        for doc_id, other_id, other_shard, position in found.iter_rows():
            earlier[doc_id].append((position, other_shard, other_id))
        wanted = {shard[0]: group["other_id"].unique().to_list() for shard, group in found.group_by("other_shard")}
        for key, text in earlier_texts(wanted).items():
            earlier_sets[key] = shingles(text, settings.ngram)

    duplicates: dict[int, NearDuplicate] = {}
    kept_in_buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, doc_id in enumerate(doc_ids):
        # (similarity, -shard position, -row) ranks: most similar first, then the earliest copy
        best: tuple[float, int, int, str, str] | None = None
        for position, other_shard, other_id in earlier.get(doc_id, ()):
            other = earlier_sets.get((other_shard, other_id))
            if other is not None:
                candidate = (jaccard(shingle_sets[i], other), -position, 0, other_id, other_shard)
                best = max(best, candidate) if best else candidate
        shared: dict[int, int] = defaultdict(int)
        for band, key in enumerate(keys[i]):
            for j in kept_in_buckets.get((band, key), ()):
                shared[j] += 1
        for j in sorted(shared, key=lambda j: (-shared[j], j))[: settings.max_candidates]:
            candidate = (jaccard(shingle_sets[i], shingle_sets[j]), -_THIS_SHARD, -j, doc_ids[j], shard)
            best = max(best, candidate) if best else candidate
        if best is not None and best[0] >= settings.threshold:
            duplicates[i] = NearDuplicate(duplicate_of=best[3], duplicate_of_shard=best[4], similarity=round(best[0], 6))
            continue
        for band, key in enumerate(keys[i]):
            kept_in_buckets[(band, key)].append(i)
    removed = {doc_ids[i] for i in duplicates}
    return duplicates, bands.filter(~pl.col("doc_id").is_in(list(removed)))
