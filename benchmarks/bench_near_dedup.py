"""Near-duplicate removal: how much it finds, against a whole-corpus run, and what a shard costs as the corpus grows.

    python benchmarks/bench_near_dedup.py                  # quality on the demo corpus with injected copies
    python benchmarks/bench_near_dedup.py --scale          # 100 shards x 10,000 documents (1M), cost per shard
    python benchmarks/bench_near_dedup.py --scale --quick  # 30 shards x 2,000 documents

Quality: the demo corpus's landing documents in 8 shards, plus copies of known originals, each put in a later
shard than its original or later in the same one: word substitutions at several edit rates, a boilerplate header
and footer with a changed date, and re-ordered paragraphs. Every shard goes through the real ``ingest_to_lake``
(exact, then near-duplicate removal against the on-disk index). Printed per kind of copy: how many were removed
(recall) and how many of those were matched to their own original or a sibling copy (precision against the ground
truth); then the documents of the corpus itself that were removed, and a comparison with the same parameters run on
the whole corpus at once in memory with datasketch's own ``MinHashLSH`` (no candidate cap, no on-disk index).

Scale: shards of distinct documents made of random sentences of the demo's text, 1% of each shard an edited copy
(1% of words) of a document two shards back; each shard is ingested in a forked child (wall time and peak RSS are
its own), as in ``bench_ingest.py``.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl
from datasketch import MinHash, MinHashLSH

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import ingest_in_child, write_shard  # noqa: E402

from climb_assets.demo.corpus import assemble_corpus  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.ingest.assets import ingest_to_lake  # noqa: E402
from climb_assets.ingest.near_dedup import FuzzySettings, jaccard, shingles  # noqa: E402
from climb_assets.ingest.shards import IngestSettings, normalize_text, text_hash  # noqa: E402
from climb_assets.lake import duplicates_path, raw_shard_path  # noqa: E402

EDIT_RATES = (0.01, 0.03, 0.05, 0.10, 0.20)
COPIES_PER_KIND = 100
QUALITY_SHARDS = 8
_WORD = re.compile(r"\S+")


def substitute_words(text: str, rate: float, rng: random.Random) -> str:
    """Replace a ``rate`` share of the words (whitespace and line breaks kept)."""
    words = _WORD.findall(text)
    chosen = set(rng.sample(range(len(words)), max(1, round(rate * len(words)))))
    replacements = iter(f"w{rng.randrange(10**6)}" for _ in range(len(chosen)))
    counter = iter(range(len(words)))
    return _WORD.sub(lambda m: next(replacements) if next(counter) in chosen else m.group(0), text)


def boilerplate(text: str, rng: random.Random) -> str:
    day = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return (f"Posted {day} by the editors of {rng.choice(['Daily Wire', 'Metro Post', 'The Ledger'])}. Share this.\n\n"
            f"{text}\n\nCopyright {day[:4]}. All rights reserved. Updated {day}.")  # fmt: skip


def reorder_paragraphs(text: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    order = list(range(len(paragraphs)))
    while order == sorted(order):
        rng.shuffle(order)
    return "\n\n".join(paragraphs[i] for i in order)


def quality_corpus(seed: int) -> tuple[list[list[dict]], dict[str, tuple[str, str]]]:
    """Shards of rows ({id, text}) and the ground truth: copy id -> (kind of copy, original id)."""
    rng = random.Random(seed)
    docs = assemble_corpus(seed=0, scale=1.0).landing
    order = list(range(len(docs)))
    rng.shuffle(order)
    shard_of = {docs[i].id: n * QUALITY_SHARDS // len(order) for n, i in enumerate(order)}
    shards: list[list[dict]] = [[] for _ in range(QUALITY_SHARDS)]
    for i in order:
        shards[shard_of[docs[i].id]].append({"id": docs[i].id, "text": docs[i].text})
    long_docs = [d for d in docs if len(d.text.split()) >= 100]
    multi_paragraph = [d for d in long_docs if d.text.count("\n\n") >= 2]
    kinds = [(f"edit {rate:.0%}", lambda t, r=rate: substitute_words(t, r, rng)) for rate in EDIT_RATES]
    kinds += [("boilerplate", lambda t: boilerplate(t, rng)), ("reordered", lambda t: reorder_paragraphs(t, rng))]
    truth: dict[str, tuple[str, str]] = {}
    for kind, make in kinds:
        pool = multi_paragraph if kind == "reordered" else long_docs
        for n, original in enumerate(rng.sample(pool, COPIES_PER_KIND)):
            copy_id = f"copy-{kind.replace(' ', '').replace('%', 'pc')}-{n}"
            shard = rng.randint(shard_of[original.id], QUALITY_SHARDS - 1)  # the same shard or a later one
            shards[shard].append({"id": copy_id, "text": make(original.text)})
            truth[copy_id] = (kind, original.id)
    for rows in shards:  # a copy in the original's own shard lands after it (registration order: row order)
        rows.sort(key=lambda row: row["id"].startswith("copy-"))
    return shards, truth


def whole_corpus_reference(shards: list[list[dict]], fuzzy: FuzzySettings) -> dict[str, str | None]:
    """The same decisions made in memory over the whole corpus at once with datasketch's MinHashLSH: removed id ->
    the kept id it near-duplicates (None: an exact duplicate)."""
    lsh = MinHashLSH(num_perm=fuzzy.num_perm, params=(fuzzy.bands, fuzzy.rows))
    seen_hashes: set[str] = set()
    kept_sets: dict[str, object] = {}
    removed: dict[str, str | None] = {}
    for rows in shards:
        for row in rows:
            text = normalize_text(row["text"])
            digest = text_hash(text)
            if digest in seen_hashes:
                removed[row["id"]] = None
                continue
            seen_hashes.add(digest)
            hashes = shingles(text, fuzzy.ngram)
            if not len(hashes):
                continue
            minhash = MinHash(num_perm=fuzzy.num_perm, seed=fuzzy.seed, hashfunc=int)
            minhash.update_batch(hashes.tolist())
            scored = [(jaccard(hashes, kept_sets[other]), other) for other in lsh.query(minhash)]
            best = max(scored, default=(0.0, None), key=lambda s: s[0])
            if best[0] >= fuzzy.threshold:
                removed[row["id"]] = best[1]
                continue
            kept_sets[row["id"]] = hashes
            lsh.insert(row["id"], minhash)
    return removed


def quality(seed: int) -> None:
    fuzzy = FuzzySettings()
    shards, truth = quality_corpus(seed)
    n_rows = sum(len(rows) for rows in shards)
    print(f"{n_rows} documents in {len(shards)} shards, {len(truth)} injected copies; MinHash {fuzzy.to_dict()}")
    with tempfile.TemporaryDirectory(prefix="bench-near-dedup-") as root:
        home = ClimbHome(Path(root)).ensure()
        names: list[str] = []
        start = time.perf_counter()
        for number, rows in enumerate(shards, start=1):
            names.append(write_shard(home, number, rows))
            ingest_to_lake(home, names[-1], IngestSettings(fuzzy=fuzzy), names[:-1])
        incremental_s = time.perf_counter() - start
        dups = pl.concat([pl.read_parquet(duplicates_path(home, name)) for name in names])
        accepted = sum(pl.scan_parquet(raw_shard_path(home, n)).select(pl.len()).collect().item() for n in names)
    with tempfile.TemporaryDirectory(prefix="bench-near-dedup-off-") as root:  # exact only, for the cost ratio
        home = ClimbHome(Path(root)).ensure()
        start = time.perf_counter()
        for number, rows in enumerate(shards, start=1):
            ingest_to_lake(home, write_shard(home, number, rows), IngestSettings(fuzzy=None), names[: number - 1])
        exact_only_s = time.perf_counter() - start
    removed = dict(zip(dups["doc_id"], dups["duplicate_of"], strict=True))
    family = defaultdict(set)  # original id -> itself and its copies
    for copy_id, (_, original) in truth.items():
        family[original] |= {original, copy_id}

    print(f"\nincremental ingest of {len(names)} shards: {incremental_s:.1f} s with near-duplicate removal, "
          f"{exact_only_s:.1f} s exact only; {accepted} accepted, {dups.height} removed "
          f"({Counter(dups['kind'].to_list())})")  # fmt: skip
    texts = {row["id"]: normalize_text(row["text"]) for rows in shards for row in rows}
    print(f"\n{'copies':<12} {'injected':>9} {'J>=thr':>7} {'removed':>8} {'recall':>7} {'recall J>=thr':>14} "
          f"{'own family':>11} {'precision':>10} {'median J':>9}")  # fmt: skip
    by_kind = defaultdict(list)
    for copy_id, (kind, original) in truth.items():
        by_kind[kind].append((copy_id, original))
    for kind, pairs in by_kind.items():
        true_j = {c: jaccard(shingles(texts[c], fuzzy.ngram), shingles(texts[o], fuzzy.ngram)) for c, o in pairs}
        eligible = [c for c, _ in pairs if true_j[c] >= fuzzy.threshold]
        hit = [(c, o) for c, o in pairs if c in removed]
        own = [c for c, o in hit if removed[c] in family[o]]
        eligible_hit = [c for c in eligible if c in removed]
        print(f"{kind:<12} {len(pairs):>9} {len(eligible):>7} {len(hit):>8} {len(hit) / len(pairs):>7.2f} "
              f"{(len(eligible_hit) / len(eligible)) if eligible else float('nan'):>14.2f} {len(own):>11} "
              f"{(len(own) / len(hit)) if hit else float('nan'):>10.2f} "
              f"{sorted(true_j.values())[len(pairs) // 2]:>9.3f}")  # fmt: skip
    natural = dups.filter(~pl.col("doc_id").is_in(list(truth)))
    print(f"\nremoved documents of the corpus itself (not injected): {natural.height} "
          f"({Counter(natural['kind'].to_list())}), similarity min {natural['similarity'].min()}, "
          f"median {natural['similarity'].median()}")  # fmt: skip

    start = time.perf_counter()
    reference = whole_corpus_reference(shards, fuzzy)
    reference_s = time.perf_counter() - start
    both = set(removed) & set(reference)
    near_both = [d for d in both if reference[d] is not None]
    relabelled = [d for d in both if (reference[d] is None) != (dict(zip(dups["doc_id"], dups["kind"]))[d] == "exact")]
    print(f"\nwhole corpus at once (datasketch MinHashLSH, in memory, {reference_s:.1f} s): {len(reference)} removed; "
          f"same documents: {len(both)}, only incremental: {len(set(removed) - set(reference))}, "
          f"only whole-corpus: {len(set(reference) - set(removed))}; near-duplicates naming the same kept copy: "
          f"{sum(removed[d] == reference[d] for d in near_both)}/{len(near_both)}; exact there, near here "
          f"(an exact copy of a document removed earlier as a near-duplicate): {len(relabelled)}")  # fmt: skip


def sentence_pool() -> list[str]:
    text = " ".join(doc.text for doc in assemble_corpus(seed=0, scale=1.0).landing)
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s) <= 400]


def composed(sentences: list[str], shard: int, number: int) -> str:
    rng = random.Random(f"{shard}:{number}")
    return " ".join(rng.choice(sentences) for _ in range(rng.randint(4, 8)))


def scale(n_shards: int, n_docs: int) -> None:
    sentences = sentence_pool()
    report_at = sorted({1, 10, 50, 100, n_shards} & set(range(1, n_shards + 1)))
    print(f"{len(sentences)} sentences; {n_shards} shards x {n_docs} documents, 1% edited copies (1% of words) of shard n-2")
    with tempfile.TemporaryDirectory(prefix="bench-near-dedup-scale-") as root:
        home = ClimbHome(Path(root)).ensure()
        registered: list[str] = []
        measured = {}
        print(f"{'shard':>6} {'wall s':>8} {'peak RSS MiB':>13} {'accepted':>9} {'duplicates':>11} {'index MiB':>10}")
        for shard in range(1, n_shards + 1):
            n_copies = n_docs // 100 if shard > 2 else 0
            rng = random.Random(shard)
            rows = [{"text": substitute_words(composed(sentences, shard - 2, n_copies + i), 0.01, rng)} for i in range(n_copies)]
            rows += [{"text": composed(sentences, shard, i)} for i in range(n_copies, n_docs)]
            name = write_shard(home, shard, rows)
            wall, rss, counts = ingest_in_child(home, name, list(registered))
            registered.append(name)
            measured[shard] = (wall, rss)
            if shard in report_at:
                index_mib = sum(p.stat().st_size for p in home.lake_dir("dedup_index").glob("*.duckdb")) / 2**20
                print(f"{shard:>6} {wall:>8.2f} {rss:>13.0f} {counts['accepted']:>9} {counts['duplicates']:>11} "
                      f"{index_mib:>10.0f}", flush=True)  # fmt: skip
        first, last = measured[1], measured[n_shards]
        print(f"shard {n_shards} / shard 1: wall x{last[0] / first[0]:.2f}, peak RSS x{last[1] / first[1]:.2f}")
        window = min(5, n_shards // 2)  # one shard's wall time is noisy (+-30% here): medians of the first and last few
        early = [measured[s] for s in range(1, window + 1)]
        late = [measured[s] for s in range(n_shards - window + 1, n_shards + 1)]
        print(f"median of the last {window} / median of the first {window}: wall "
              f"x{statistics.median(w for w, _ in late) / statistics.median(w for w, _ in early):.2f}, peak RSS "
              f"x{statistics.median(r for _, r in late) / statistics.median(r for _, r in early):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="store_true", help="cost per shard as the corpus grows")
    parser.add_argument("--quick", action="store_true", help="with --scale: 30 shards x 2,000 documents")
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.scale:
        scale(*((30, 2_000) if args.quick else (args.shards, args.docs)))
    else:
        quality(args.seed)


if __name__ == "__main__":
    main()
