"""Pluggable document quality scorers.

Every scorer returns the same frame: the heuristic signal columns (so the dbt models and reports always have
them), ``heuristic_score``, any scorer-specific columns, and ``quality_score`` on the paper's 1–5 scale, which is
what cluster pruning uses. The default is rule-based (no model needed); teams with their own fastText quality
classifier (as in DCLM / Nemotron-CC) plug it in with ``FastTextScorer``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl

from climb_assets.quality.signals import document_signals, heuristic_score


@runtime_checkable
class QualityScorer(Protocol):
    """Anything with a ``name`` and ``score(texts)`` returning one row per text with a ``quality_score`` column."""

    name: str

    def score(self, texts: Sequence[str] | pl.Series) -> pl.DataFrame: ...


def _with_heuristics(texts: Sequence[str] | pl.Series) -> pl.DataFrame:
    signals = document_signals(texts)
    return signals.with_columns(heuristic_score(signals))


class HeuristicScorer:
    """Default scorer: Gopher/C4/FineWeb rules, ``quality_score`` = ``heuristic_score``."""

    name = "heuristic"

    def score(self, texts: Sequence[str] | pl.Series) -> pl.DataFrame:
        frame = _with_heuristics(texts)
        return frame.with_columns(quality_score=pl.col("heuristic_score"))


_LABEL_PREFIX = "__label__"


def _default_label_score(label: str) -> float:
    """``__label__4`` -> 4.0: the usual convention for graded quality classifiers."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)", label)
    if not match:
        raise ValueError(
            f"fastText label {label!r} is not a number; pass label_scores={{label: score}} to map it to 1–5"
        )
    return float(match.group(1))


class FastTextScorer:
    """Wraps a user's supervised fastText classifier (``.bin``); the quality score is the expected label score.

    ``quality_score = sum_label P(label | text) * label_scores[label]``, clamped to [1, 5]. ``label_scores`` maps
    label names (with or without ``__label__``) to scores; by default numeric labels are their own score, so a
    1–5 graded classifier works as is and a binary ``hq``/``lq`` one needs e.g. ``{"hq": 5, "lq": 1}``.
    One ``p_<label>`` column per label is added so the score can be audited.
    """

    def __init__(self, model_path: str | os.PathLike, label_scores: Mapping[str, float] | None = None) -> None:
        import fasttext  # optional dependency: only needed when this scorer is chosen

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"fastText model not found: {path}")
        self.model = fasttext.load_model(str(path))
        self.labels = [label.removeprefix(_LABEL_PREFIX) for label in self.model.get_labels()]
        given = {k.removeprefix(_LABEL_PREFIX): float(v) for k, v in (label_scores or {}).items()}
        unknown = set(given) - set(self.labels)
        if unknown:
            raise ValueError(f"label_scores names labels the model does not have: {sorted(unknown)}")
        self.label_scores = {
            label: given[label] if label in given else _default_label_score(label) for label in self.labels
        }
        self.name = f"fasttext:{path.name}"

    def probabilities(self, texts: Sequence[str] | pl.Series) -> np.ndarray:
        """N x L matrix of label probabilities (columns in ``self.labels`` order).

        Goes through the low-level ``model.f.predict`` because ``FastText.predict`` builds its result with
        ``np.array(..., copy=False)``, which numpy 2 rejects. fastText reads one line, so newlines become spaces.
        """
        column = {label: i for i, label in enumerate(self.labels)}
        out = np.zeros((len(texts), len(self.labels)))
        for row, text in enumerate(texts):
            line = " ".join(str(text).split())
            for prob, label in self.model.f.predict(line, len(self.labels), 0.0, "strict"):
                out[row, column[label.removeprefix(_LABEL_PREFIX)]] = prob
        return out

    def score(self, texts: Sequence[str] | pl.Series) -> pl.DataFrame:
        frame = _with_heuristics(texts)
        probs = self.probabilities(texts)
        weights = np.array([self.label_scores[label] for label in self.labels])
        expected = probs @ weights / np.maximum(probs.sum(axis=1), 1e-12)
        return frame.with_columns(
            *(pl.Series(f"p_{label}", probs[:, i]) for i, label in enumerate(self.labels)),
            quality_score=pl.Series(np.clip(expected, 1.0, 5.0)),
        )


def score_documents(scorer: QualityScorer, docs: pl.DataFrame) -> pl.DataFrame:
    """The ``lake/quality/{shard}.parquet`` frame for ``docs`` (doc_id, text): doc_id first, then the scorer's
    columns, one row per document in the same order. A score outside 1–5 or NaN is an error, not a row."""
    scored = scorer.score(docs["text"])
    if scored.height != docs.height:
        raise ValueError(f"scorer {scorer.name} returned {scored.height} rows for {docs.height} documents")
    bad = scored.filter(~pl.col("quality_score").is_between(1.0, 5.0) | pl.col("quality_score").is_nan())
    if bad.height:
        raise ValueError(f"scorer {scorer.name} produced {bad.height} scores outside [1, 5]")
    return scored.with_columns(scorer=pl.lit(scorer.name)).insert_column(0, docs["doc_id"])


def make_scorer(kind: str = "heuristic", **options: object) -> QualityScorer:
    """Build a scorer from config: ``heuristic`` or ``fasttext`` (options: model_path, label_scores)."""
    if kind == "heuristic":
        return HeuristicScorer()
    if kind == "fasttext":
        return FastTextScorer(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown quality scorer {kind!r}; expected 'heuristic' or 'fasttext'")
