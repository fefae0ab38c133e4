"""Clusters at growing corpus sizes: is the fit bounded by its sample, and does assigning one new shard cost the
same after 10, 100 or 1000 shards? Prints a table (wall seconds, peak RSS) and a per-shard extrapolation to 1B docs.

    PYTHONPATH=. python benchmarks/bench_cluster_scale.py --docs 100000 1000000 [10000000] --k 1000

Synthetic corpus: float16 unit vectors around Gaussian blob centres (384 dims), 10k-document shards written in the
lake's embedding format. Every measured step runs in its own child process, whose peak RSS is read with
``getrusage(RUSAGE_CHILDREN)`` in a fresh parent, so one step's peak never hides another's. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from climb_assets.home import ClimbHome

DIM = 384
BLOBS = 200


def write_corpus(home: ClimbHome, n_docs: int, shard_docs: int, seed: int = 0) -> int:
    """Add shards until the corpus holds ``n_docs`` (kept across sizes: a bigger corpus extends a smaller one)."""
    from climb_assets.embed.encode import write_embeddings

    centres = np.random.default_rng(1234).standard_normal((BLOBS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    existing = len(list(home.lake_dir("embeddings").glob("*.npz")))
    for index in range(existing, n_docs // shard_docs):
        write_shard(home, f"shard-{index:06d}", centres, shard_docs, seed + index, write_embeddings)
    return n_docs // shard_docs


def write_shard(home: ClimbHome, name: str, centres, n: int, seed: int, write_embeddings) -> None:
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.6 / np.sqrt(DIM) * rng.standard_normal((n, DIM), np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_embeddings(home.lake_dir("embeddings") / f"{name}.npz", [f"{name}-{i}" for i in range(n)], vectors, "synthetic")


def step(args: argparse.Namespace) -> dict:
    """One measured step, in this (child) process."""
    from climb_assets.cluster.lake import FitSettings, assign_shard, fit_centroids

    home = ClimbHome(Path(args.home))
    if args.step == "fit":
        version, info = fit_centroids(home, FitSettings(k=args.k, seed=0, niter=args.niter, nredo=1))
        return {"version": version, "sample_rows": info["sample_rows"], "docs": info["docs"]}
    from climb_assets.embed.encode import write_embeddings

    centres = np.random.default_rng(1234).standard_normal((BLOBS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    name = f"new-{args.tag}"
    write_shard(home, name, centres, args.shard_docs, 999_999, write_embeddings)
    started = time.perf_counter()
    info = assign_shard(home, name)
    info["assign_seconds"] = round(time.perf_counter() - started, 3)
    (home.lake_dir("embeddings") / f"{name}.npz").unlink()  # keep the corpus size fixed for the next size
    return info


def measure(argv: list[str]) -> dict:
    """Run one step in a child of a fresh parent: wall seconds and that child's peak RSS alone."""
    code = (
        "import json,resource,subprocess,sys,time;t=time.perf_counter();"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "print(json.dumps({'rc':p.returncode,'out':p.stdout,'err':p.stderr[-2000:],'wall':time.perf_counter()-t,"
        "'rss_kib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    done = subprocess.run([sys.executable, "-c", code, sys.executable, __file__, *argv], capture_output=True, text=True)
    result = json.loads(done.stdout)
    if result["rc"]:
        raise SystemExit(f"step {argv} failed: {result['err']}")
    return {"wall_s": round(result["wall"], 2), "peak_rss_mib": round(result["rss_kib"] / 1024), **json.loads(result["out"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--shard-docs", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--workdir", default=None, help="where the synthetic lake is written (default: a temp dir)")
    parser.add_argument("--step", choices=["fit", "assign"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args)))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cluster-"))
    home = ClimbHome(root / "climb").ensure()
    common = ["--home", str(home.root), "--k", str(args.k), "--niter", str(args.niter), "--shard-docs", str(args.shard_docs)]
    rows = []
    for n_docs in sorted(args.docs):
        started = time.perf_counter()
        shards = write_corpus(home, n_docs, args.shard_docs)
        print(f"corpus {n_docs:,} docs in {shards} shards written in {time.perf_counter() - started:.0f}s", flush=True)
        fit = measure(["--step", "fit", *common])
        assigned = measure(["--step", "assign", "--tag", str(shards), *common])
        rows.append({"docs": n_docs, "shards": shards, "fit": fit, "assign": assigned})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| docs | shards | sample rows | sample + fit K={args.k} (s) | fit peak RSS (MiB) "
          "| assign 1 new shard (s, whole step) | assign only (s) | assign peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['docs']:,} | {r['shards']} | {r['fit']['sample_rows']:,} | {r['fit']['wall_s']} | "
              f"{r['fit']['peak_rss_mib']} | {r['assign']['wall_s']} | {r['assign']['assign_seconds']} | "
              f"{r['assign']['peak_rss_mib']} |")
    last = rows[-1]
    per_shard = last["assign"]["wall_s"]
    billion_shards = 1_000_000_000 // args.shard_docs
    print(f"\nExtrapolation to 1B docs ({billion_shards:,} shards of {args.shard_docs:,}): the fit reads the same "
          f"{last['fit']['sample_rows']:,}-row sample (~{last['fit']['wall_s']} s, {last['fit']['peak_rss_mib']} MiB); "
          f"assigning one new shard stays ~{per_shard} s / {last['assign']['peak_rss_mib']} MiB; a full re-assignment "
          f"after a refit is {billion_shards:,} independent shard runs = ~{billion_shards * per_shard / 3600:.0f} "
          "worker-hours at this rate, in parallel over as many workers as there are.")
    print(f"lake: {root}  (peak RSS per step measured with getrusage(RUSAGE_CHILDREN) in a fresh parent)")


if __name__ == "__main__":
    main()
