"""How torch's OpenMP threads wait between operations, chosen when a command starts (libgomp reads its
settings once, when torch loads it).

Spinning threads (libgomp's default: spin a while, then sleep) pick up the next operation at once; sleeping
ones (`OMP_WAIT_POLICY=PASSIVE`) must be woken for every operation. On an idle 2-core machine spinning read
1.2-1.5x faster at batch 1 (many small operations) and 1.1-1.2x at batch 8; beside one or two busy
processes it read 1.2-5x slower than sleeping, as the threads fight the other processes for the cores
(`benchmarks/wait_policy.py`, benchmarks/RESULTS.md). So threads spin only when the machine is idle as the
command starts, and under `torchrun` (its processes share the cores) never. A setting the user made
(`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`) is always kept.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which threads sleep


def busy_cores(interval: float = 0.1) -> float | None:
    """CPU cores other processes kept busy over `interval` seconds (this process sleeps meanwhile), from
    /proc/stat; None where there is no /proc/stat."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None:
        return None
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle and iowait
    return max(0.0, (total - idle) / total) * (os.cpu_count() or 1) if total > 0 else 0.0


def _cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        return None
    return [int(x) for x in fields[1:9]]


def wait_policy(env: dict, measure: Callable[[], float | None] = busy_cores) -> str | None:
    """The `OMP_WAIT_POLICY` to set: "PASSIVE" (threads sleep), or None to leave things as they are (the
    user's own setting, or libgomp's default of spinning a while). `measure` gives the busy cores and is
    called only when they decide."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return None
    if env.get("WORLD_SIZE", "1") not in ("", "1"):  # torchrun: the processes share the cores
        return "PASSIVE"
    busy = measure()
    return "PASSIVE" if busy is None or busy >= BUSY_CORES else None


def choose_wait_policy() -> str:
    """Set `OMP_WAIT_POLICY` for this process and its children, before torch is imported (once it is, the
    setting cannot change anything, so nothing is measured). Returns the policy in force."""
    if "torch" not in sys.modules:
        policy = wait_policy(dict(os.environ))
        if policy is not None:
            os.environ["OMP_WAIT_POLICY"] = policy
    return os.environ.get("OMP_WAIT_POLICY", "default")
