"""Proxies per minute with 1 and with 2 parallel gpu slots, the same proxies' results either way, and the arithmetic
for the paper's 112-proxy search on many GPUs (prints numbers; not a test).

    python benchmarks/bench_proxy_parallel.py               # 8 demo-sized proxies (100k tokens each)
    python benchmarks/bench_proxy_parallel.py --quick       # 4 tiny proxies, a smoke run

Each run is iteration 1 of a real search (the CLI's job runner: one process per step with more than one slot),
on a small corpus of real text (Shakespeare, standard-library code, number tables). On a CPU-only machine a slot is a
CPU slot with its share of the cores, so 2 slots on 2 cores measure scheduling overhead and overlap, not extra
hardware; on a GPU node each slot is a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets_tests.conftest import TINY_SEARCH  # noqa: E402
from climb_assets_tests.test_parallel_slots import run_iteration_1  # noqa: E402
from climb_assets_tests.test_resume import write_search_state  # noqa: E402

PAPER_ITERATIONS = (64, 32, 16)
PAPER_GPU_HOURS_PER_PROXY = 45.0  # the figure for the paper's 62M-350M proxies


def measure(slots: int, settings: dict, root: Path) -> tuple[float, float, object]:
    home = ClimbHome(root / f"slots-{slots}").ensure()
    write_search_state(home)
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    results, steps = run_iteration_1(home, slots, settings)
    wall = max(s["end"] for s in steps.values()) - min(s["start"] for s in steps.values())
    busy = sum(s["end"] - s["start"] for s in steps.values())
    return wall, busy, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 4 if args.quick else 8
    settings = {**TINY_SEARCH, "proxies_per_iteration": [n], "base_token_budget": 4_000, "max_repeats": 50.0,
                "num_threads": 1}  # one thread per proxy: identical arithmetic with 1 or 2 slots  # fmt: skip
    if not args.quick:  # the demo's proxy: the tiny preset (2 x 128), 100k tokens, batch 16 x 128
        settings |= {"n_layer": 0, "n_head": 0, "n_embd": 0, "block_size": 128, "batch_size": 16,
                     "token_budget": 100_000, "tokenizer_vocab_size": 4096}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        rows = {slots: measure(slots, settings, Path(tmp)) for slots in (1, 2)}
    columns = ["candidate_id", "fingerprint", "objective"]
    identical = rows[1][2].select(columns).equals(rows[2][2].select(columns))
    print(f"{n} proxies of iteration 1, one step (process) each, {os.cpu_count()} cores")
    print("| gpu slots | proxy phase wall (s) | proxies per minute | mean step time (s) |")
    print("|---|---|---|---|")
    for slots, (wall, busy, _) in rows.items():
        print(f"| {slots} | {wall:.1f} | {60 * n / wall:.1f} | {busy / n:.1f} |")
    print(f"speed-up 2 slots vs 1: {rows[1][0] / rows[2][0]:.2f}x; results identical: {identical}")
    per_proxy = rows[1][1] / n
    print(f"\nmeasured cost of one proxy step here: {per_proxy:.1f} s")
    print(f"\nthe paper's search ({'+'.join(map(str, PAPER_ITERATIONS))} proxies, iterations in sequence, "
          f"{PAPER_GPU_HOURS_PER_PROXY:g} GPU-hours per proxy), wall time vs GPUs:")  # fmt: skip
    print("| GPUs | waves (sum over iterations of ceil(n_k / GPUs)) | wall time (hours) | days |")
    print("|---|---|---|---|")
    for gpus in (1, 8, 16, 32, 64):
        waves = sum(math.ceil(k / gpus) for k in PAPER_ITERATIONS)
        hours = waves * PAPER_GPU_HOURS_PER_PROXY
        nodes = f" ({gpus // 8} node{'s' if gpus > 8 else ''} of 8 GPUs)" if gpus >= 8 else ""
        print(f"| {gpus}{nodes} | {waves} | {hours:,.0f} | {hours / 24:.1f} |")


if __name__ == "__main__":
    main()
