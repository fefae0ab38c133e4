"""Quality signals, the heuristic 1–5 score and the pluggable scorers, on hand-made texts."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import polars as pl
import pytest

from climb_assets.quality.scorers import (
    FastTextScorer,
    HeuristicScorer,
    QualityScorer,
    make_scorer,
    score_documents,
)
from climb_assets.quality.signals import (
    DUP_NGRAM_SIZES,
    SIGNAL_COLUMNS,
    TOP_NGRAM_SIZES,
    document_signals,
    heuristic_score,
    rule_violations,
)

PROSE = """The river town grew slowly during the nineteenth century, when the new railway line brought traders and
families from the surrounding farms. Most of the early houses were built from local stone, and several of them
still stand near the old market square.

In the 1890s the town council decided to replace the wooden bridge with an iron one. The project took three years
and cost far more than planned, but it allowed heavy wagons to cross the river in every season. Local newspapers
of the time describe the opening ceremony as the largest public gathering the town had ever seen.

Today the bridge is a protected monument. Visitors can walk across it, read the history panels at both ends, and
continue along the riverside path to the museum, which keeps photographs and records from that period."""

NAV = "\n".join(
    ["Home", "About Us", "Products", "Contact", "Login", "Cart (0)"] * 2
    + ["Privacy Policy", "Terms", "Sitemap", "© 2024 All rights reserved", "Home", "About Us", "Products"]
)

CODE = '''def moving_average(values: list[float], window: int) -> list[float]:
    """Return the moving average of values over a sliding window."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            result.append(total / window)
    return result


class Counter:
    """Count how often each key was seen."""

    def __init__(self) -> None:
        self.counts = {}

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
'''


def test_prose_beats_code_beats_navigation_spam() -> None:
    signals = document_signals([PROSE, CODE, NAV])
    prose, code, nav = heuristic_score(signals).to_list()
    assert prose == 5.0
    assert prose > code > nav
    assert nav <= 2.0
    rules = rule_violations(signals)
    hits = {name: rules[name].to_list() for name in rules.columns}
    # Navigation spam: short, unpunctuated, repeated lines and a dominant repeated bigram.
    for rule in ("short_lines", "line_punctuation", "duplicate_lines", "top_ngram", "too_few_words"):
        assert hits[rule][2], rule
    # Code: symbols-only tokens and lines that do not end like sentences.
    assert hits["alpha_words"][1] and hits["line_punctuation"][1]
    assert not any(values[0] for values in hits.values()), "clean prose breaks no rule"


def test_signal_values_match_their_definitions() -> None:
    texts = [
        "a b c d e a b c d e a b c d e a b c d e",  # 4 x the same 5-gram
        "x\ny\nx\nx",  # lines: 2 of 4 repeat an earlier one
        "- one\n- two\n* three\nfour...",  # 3 bullets of 4 lines, 1 ellipsis line
        "# tag # tag word...",  # symbols: 2 hashes + 1 ellipsis over 5 words
        "Para one here.\n\nPara one here.\n\nAnother para.",  # 1 of 3 paragraphs repeats
    ]
    s = document_signals(texts)
    assert s.columns == list(SIGNAL_COLUMNS)
    # Repeats start at word 5 and cover words 5..19: 15 of 20 one-character words.
    assert s["dup_5gram_char_fraction"][0] == pytest.approx(15 / 20)
    # "a b" occurs 4 times, 2 chars each, out of 20 word characters.
    assert s["top_2gram_char_fraction"][0] == pytest.approx(4 * 2 / 20)
    assert s["dup_line_fraction"][1] == pytest.approx(2 / 4)
    assert s["bullet_line_fraction"][2] == pytest.approx(3 / 4)
    assert s["ellipsis_line_fraction"][2] == pytest.approx(1 / 4)
    assert s["symbol_to_word_ratio"][3] == pytest.approx(3 / 5)
    assert s["dup_paragraph_fraction"][4] == pytest.approx(1 / 3)
    assert s["word_count"].to_list() == [20, 4, 7, 5, 8]
    assert s["stop_word_count"][0] == 4  # the four "a"


def _reference_ngram_signals(text: str) -> dict[str, float]:
    """Straight Python transcription of the definitions the vectorised code implements."""
    words = text.split()
    total = max(sum(len(w) for w in words), 1)
    out: dict[str, float] = {}
    for n in TOP_NGRAM_SIZES:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        repeated = [(count, sum(map(len, gram))) for gram, count in grams.items() if count >= 2]
        out[f"top_{n}gram_char_fraction"] = (max(repeated)[0] * max(repeated)[1] / total) if repeated else 0.0
    for n in DUP_NGRAM_SIZES:
        seen: set[tuple[str, ...]] = set()
        covered = [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen:
                covered[i : i + n] = [True] * n
            seen.add(gram)
        out[f"dup_{n}gram_char_fraction"] = sum(len(w) for w, c in zip(words, covered) if c) / total
    return out


def test_vectorised_ngram_signals_match_reference_and_do_not_leak_between_documents() -> None:
    rng = random.Random(7)
    vocab = ["alpha", "be", "sea", "d", "echo", "fox"]  # tiny vocabulary: lots of repeated n-grams
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 60))) for _ in range(40)]
    batch = document_signals(texts)
    for row, text in enumerate(texts):
        expected = _reference_ngram_signals(text)
        for column, value in expected.items():
            assert batch[column][row] == pytest.approx(value), (row, column)
    alone = pl.concat([document_signals([t]) for t in texts[:8]])
    assert alone.equals(batch.head(8))


def test_empty_text_is_scored_not_dropped_and_null_is_an_error() -> None:
    s = document_signals(pl.Series(["", "   \n  ", PROSE]))
    assert s.height == 3
    assert s["word_count"].to_list()[:2] == [0, 0]
    assert heuristic_score(s).to_list()[:2] == [1.0, 1.0]
    with pytest.raises(ValueError, match="null"):
        document_signals(pl.Series([PROSE, None]))


def test_heuristic_scorer_and_score_documents() -> None:
    scorer = make_scorer("heuristic")
    assert isinstance(scorer, QualityScorer) and isinstance(scorer, HeuristicScorer)
    docs = pl.DataFrame({"doc_id": ["p", "c", "n"], "text": [PROSE, CODE, NAV]})
    frame = score_documents(scorer, docs)
    assert frame.columns[0] == "doc_id" and frame["doc_id"].to_list() == ["p", "c", "n"]
    assert set(SIGNAL_COLUMNS) <= set(frame.columns)
    assert frame["quality_score"].to_list() == frame["heuristic_score"].to_list()
    assert frame["quality_score"].is_between(1, 5).all()
    with pytest.raises(ValueError, match="unknown quality scorer"):
        make_scorer("magic")


def _fasttext_training_file(path) -> None:
    """A few hundred hand-made lines: graded 5 = editorial prose, 1 = shop/navigation boilerplate."""
    rng = random.Random(0)
    subjects = ["the council", "the researchers", "local farmers", "the museum", "the committee", "historians"]
    verbs = ["described", "reviewed", "discussed", "restored", "documented", "explained"]
    objects = ["the old bridge", "the annual budget", "the river records", "the railway history", "the harvest"]
    spam = ["home", "login", "cart", "buy now", "click here", "free shipping", "sale", "sitemap", "contact us"]
    lines = []
    for _ in range(200):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} in careful detail ."
        lines.append(f"__label__5 {sentence}")
        lines.append("__label__1 " + " | ".join(rng.choices(spam, k=6)))
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")


def test_fasttext_scorer_maps_label_probabilities_to_the_1_to_5_scale(tmp_path) -> None:
    fasttext = pytest.importorskip("fasttext")
    train = tmp_path / "train.txt"
    _fasttext_training_file(train)
    model = fasttext.train_supervised(str(train), epoch=10, thread=1, seed=0, verbose=0)
    model_path = tmp_path / "quality.bin"
    model.save_model(str(model_path))

    scorer = FastTextScorer(model_path)
    good = "The committee discussed the railway history in careful detail.\nHistorians restored the old bridge."
    bad = "Home | Login | Cart\nBuy now | Click here | Free shipping"
    frame = scorer.score([good, bad])
    assert isinstance(scorer, QualityScorer) and scorer.name == "fasttext:quality.bin"
    probs = frame.select("p_1", "p_5").to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    expected = (probs @ np.array([1.0, 5.0])) / probs.sum(axis=1)
    assert frame["quality_score"].to_numpy() == pytest.approx(expected)
    assert frame["quality_score"][0] > 4.0
    assert frame["quality_score"][1] < 2.0
    assert set(SIGNAL_COLUMNS) <= set(frame.columns)

    # Explicit mapping for named labels; unknown names are rejected, non-numeric labels need a mapping.
    inverted = FastTextScorer(model_path, label_scores={"__label__5": 1.0, "1": 5.0}).score([good])
    assert inverted["quality_score"][0] < 2.0
    with pytest.raises(ValueError, match="does not have"):
        FastTextScorer(model_path, label_scores={"hq": 5.0})
    named = tmp_path / "named.txt"
    named.write_text(train.read_text().replace("__label__5", "__label__hq").replace("__label__1", "__label__lq"))
    named_model = tmp_path / "named.bin"
    fasttext.train_supervised(str(named), epoch=5, thread=1, seed=0, verbose=0).save_model(str(named_model))
    with pytest.raises(ValueError, match="not a number"):
        FastTextScorer(named_model)
    assert FastTextScorer(named_model, label_scores={"hq": 5, "lq": 1}).score([good])["quality_score"][0] > 4.0
