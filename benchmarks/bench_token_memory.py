"""Peak memory and wall time of the token path as the corpus grows (prints numbers; not a test).

    python benchmarks/bench_token_memory.py                       # 100k and 1M documents
    python benchmarks/bench_token_memory.py --sizes 20000 --quick # a smoke run

For each corpus size a lake is built in a temp dir: raw shards of ``--docs-per-shard`` synthetic documents
(vocabulary words perturbed by random digits, ~``--mean-chars`` characters each) spread over 8 super-clusters,
tokenized with the ByteTokenizer (exact, and fast enough to tokenize a million documents on two cores; a BPE costs
more per token but the memory shape is the same). Then, each in a fresh child process (so peak RSS is that step's):

(a) tokenizing one new shard (``ensure_token_files`` with every other shard already current);
(index) the first load after a (re-)clustering: joins every kept document id once and stores the group index;
(b) a proxy: loading the corpus index + data for a fixed token budget + the training steps (tiny model);
(c) ClimbMix writing a fixed token budget.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.lm.token_files import ensure_token_files  # noqa: E402
from climb_assets.lm.tokenizer import ByteTokenizer  # noqa: E402

WORDS = np.array("data model token cluster mixture proxy search weight budget shard text lake".split())
GROUPS = 8


def synthetic_shard(name: str, n: int, mean_chars: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    words = max(2, mean_chars // 7)
    texts = [
        " ".join(f"{w}{d}" for w, d in zip(rng.choice(WORDS, k), rng.integers(0, 99, k)))
        for k in rng.integers(words // 2, words * 3 // 2, n)
    ]
    return pl.DataFrame({"doc_id": [f"{name}-{i:07d}" for i in range(n)], "text": texts, "shard": [name] * n})


def build_lake(root: Path, n_docs: int, docs_per_shard: int, mean_chars: int) -> ClimbHome:
    home = ClimbHome(root).ensure()
    raw = home.lake_dir("raw_shards")
    raw.mkdir(parents=True, exist_ok=True)
    for s in range(n_docs // docs_per_shard):
        synthetic_shard(f"shard-{s:05d}", docs_per_shard, mean_chars, s).write_parquet(raw / f"shard-{s:05d}.parquet")
    ensure_token_files(home, ByteTokenizer())
    write_membership(home)
    return home


def write_membership(home: ClimbHome) -> None:
    ids = pl.scan_parquet(home.lake_dir("raw_shards") / "*.parquet").select("doc_id").collect()
    clusters = home.lake_dir("super_clusters")
    clusters.mkdir(parents=True, exist_ok=True)
    ids.with_columns(super_cluster_id=pl.col("doc_id").hash() % GROUPS).write_parquet(clusters / "documents.parquet")
    pl.DataFrame({"super_cluster_id": list(range(GROUPS)), "label": [f"g{g}" for g in range(GROUPS)],
                  "version": ["bench"] * GROUPS}).write_parquet(clusters / "super_clusters.parquet")  # fmt: skip


def child(step: str, root: str, args: argparse.Namespace) -> dict:
    """One measured step, in this (child) process."""
    home = ClimbHome(Path(root))
    tokenizer = ByteTokenizer()
    started = time.perf_counter()
    info: dict = {}
    if step == "tokenize_new_shard":
        info = {k: len(v) for k, v in ensure_token_files(home, tokenizer).items()}
    elif step == "build_index":
        from climb_assets.lm.proxy import load_search_corpus

        info = {"groups": len(load_search_corpus(home, tokenizer).groups)}
    elif step == "proxy":
        from climb_assets.lm.proxy import (
            ProxySettings,
            TargetData,
            load_search_corpus,
            run_proxy,
        )
        from climb_assets.lm.targets import TargetSpec

        corpus = load_search_corpus(home, tokenizer)
        settings = ProxySettings(n_layer=1, n_head=2, n_embd=64, block_size=128, batch_size=8,
                                 token_budget=args.proxy_tokens, num_threads=1)  # fmt: skip
        target = TargetData(TargetSpec(kind="bpb"), texts=["data model token cluster " * 40])
        outcome, _ = run_proxy(corpus, tokenizer, np.full(GROUPS, 1 / GROUPS), settings, target, seed=0)
        info = {"steps": len(outcome.loss_curve), "tokens_seen": outcome.tokens_seen}
    elif step == "climbmix":
        from climb_assets.climbmix.mix import write_climbmix
        from climb_assets.lm.proxy import load_search_corpus

        corpus = load_search_corpus(home, tokenizer)
        manifest = write_climbmix(home.climbmix / "bench", corpus, np.full(GROUPS, 1 / GROUPS),
                                  token_budget=args.mix_tokens, max_repeats=4.0, seed=0, docs_per_shard=5000,
                                  manifest_extra={})  # fmt: skip
        info = {"documents": manifest["documents"], "tokens": manifest["tokens"]}
    seconds = time.perf_counter() - started
    return {"step": step, "seconds": round(seconds, 2), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **info}


def measure(step: str, home: ClimbHome, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", step, str(home.root), *argv],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--docs-per-shard", type=int, default=20_000)
    parser.add_argument("--mean-chars", type=int, default=300)
    parser.add_argument("--proxy-tokens", type=int, default=100_000)
    parser.add_argument("--mix-tokens", type=int, default=5_000_000)
    parser.add_argument("--quick", action="store_true", help="small budgets for a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.proxy_tokens, args.mix_tokens = 10_000, 200_000
    budgets = ["--proxy-tokens", str(args.proxy_tokens), "--mix-tokens", str(args.mix_tokens)]
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args)))
        return
    rows = []
    for n_docs in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
            started = time.perf_counter()
            home = build_lake(Path(tmp), n_docs, args.docs_per_shard, args.mean_chars)
            build = time.perf_counter() - started
            name = f"shard-{n_docs // args.docs_per_shard:05d}"
            synthetic_shard(name, args.docs_per_shard, args.mean_chars, 10**6).write_parquet(
                home.lake_dir("raw_shards") / f"{name}.parquet"
            )
            for step in ("tokenize_new_shard", "build_index", "proxy", "climbmix"):
                row = {"docs": n_docs, **measure(step, home, budgets)}
                rows.append(row)
                print(json.dumps(row | {"lake_build_s": round(build, 1)}), flush=True)
    print(pl.DataFrame(rows).select("docs", "step", "seconds", "peak_rss_mb"))


if __name__ == "__main__":
    main()
