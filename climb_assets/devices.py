"""GPU capacity: how many accelerator slots this machine has, and a lease that pins one step to one of them.

The ``gpu`` pool bounds how many GPU steps run at once (its limit is the slot count, see ``climb_assets.instance``);
the lease decides *which* device each running step gets. A lease is an exclusive ``flock`` on
``CLIMB_HOME/devices/<device>.lock``: the kernel releases it when the holding process dies, so a killed step never
keeps its GPU, and two live steps never share one. On a CPU-only machine the slots are CPU slots, and each step gets
its share of the cores as torch threads, so two slots do not thrash each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from climb_assets.home import ClimbHome
from climb_assets.storage import exclusive_lock
from climb_assets.tags import GPU_POOL

WAIT_SECONDS = 0.2


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_slots() -> int:
    """One slot per GPU; on a CPU-only machine one slot (proxy training already uses every core)."""
    return cuda_devices() or 1


def gpu_slots(instance) -> int:
    """The ``gpu`` pool's limit on a Dagster instance: the number of devices steps may lease."""
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return max(1, info.slot_count or 1)


@dataclass(frozen=True)
class Lease:
    """The device a step holds for its lifetime: ``cuda:N``, or ``cpu`` with the slot's share of threads."""

    name: str
    device: str
    threads: int | None

    def metadata(self) -> dict[str, object]:
        return {"device": self.name, "torch_device": self.device, "threads": self.threads or 0, "pid": os.getpid()}


def _devices(slots: int) -> list[tuple[str, str, int | None]]:
    gpus = cuda_devices()
    if gpus:
        return [(f"cuda-{i}", f"cuda:{i}", None) for i in range(gpus)]
    threads = max(1, cpu_cores() // max(1, slots))
    return [(f"cpu-slot-{i}", "cpu", threads) for i in range(max(1, slots))]


@contextmanager
def device_lease(home: ClimbHome, slots: int) -> Iterator[Lease]:
    """Hold one free device until the block ends (or the process dies). Waits if every device is held, which the
    pool limit prevents in normal operation; a deployment with more processes than slots still stays correct."""
    directory = home.root / "devices"
    candidates = _devices(slots)
    while True:
        for name, device, threads in candidates:
            with exclusive_lock(directory / f"{name}.lock", wait=False) as held:
                if held:
                    yield Lease(name, device, threads)
                    return
        time.sleep(WAIT_SECONDS)
