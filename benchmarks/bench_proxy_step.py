"""One proxy's training time on CPU with glibc's default allocator thresholds and with the ones climb sets
(``lm.train.retain_freed_memory``), each in a fresh process (the setting is process-wide), at the search's default
proxy settings and at the demo preset. Prints wall time, kernel time, page faults and peak memory (not a test).

    python benchmarks/bench_proxy_step.py            # 3 repeats per setting
    python benchmarks/bench_proxy_step.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 4096  # the proxy tokenizer's default vocabulary


def train_once(preset: str, retain: bool) -> dict:
    import torch

    from climb_assets.lm import train
    from climb_assets.lm.proxy import ProxySettings

    if not retain:
        train.retain_freed_memory = lambda: False  # glibc's defaults: the plain baseline
    settings = ProxySettings(model_preset=preset)
    generator = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        return torch.randint(0, VOCAB, (settings.batch_size, settings.block_size + 1), generator=generator)

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    train.train_proxy(settings.model_config(VOCAB), settings.train_config(seed=0), batch)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "kernel_s": after.ru_stime - before.ru_stime,
        "page_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }


def measure(preset: str, retain: bool) -> dict:
    command = [sys.executable, __file__, "--child", preset, "retain" if retain else "default"]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_once(args.child[0], args.child[1] == "retain")))
        return
    print("| preset | allocator | wall s (median) | kernel s | page faults | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for preset in ("tiny", "demo"):
        medians = {}
        for retain in (False, True):
            runs = [measure(preset, retain) for _ in range(args.repeats)]
            row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            medians[retain] = row["wall_s"]
            label = "climb's thresholds" if retain else "glibc defaults"
            print(f"| {preset} | {label} | {row['wall_s']:.2f} | {row['kernel_s']:.2f} | {row['page_faults']:,.0f} | "
                  f"{row['peak_rss_mib']:.0f} |", flush=True)
        print(f"| {preset} | speed-up | {medians[False] / medians[True]:.2f}x | | | |", flush=True)


if __name__ == "__main__":
    main()
