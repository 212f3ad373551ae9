"""The process's memory: glibc's allocator settings, handing free pages back, transparent huge pages."""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import time

from pipelines.runtime.cpu import cpu_has_bf16_units


def use_huge_pages() -> None:
    """Large tensors on transparent huge pages where the commands run float32 (CPUs without bf16 units).

    Fine-tuning allocates the (B, H, T, K) attention tensors afresh at every step and glibc faults their 4 kB
    pages in again each time (float32 MiniLM on bbc_news: 554,000 page faults a step on 4 kB pages, 834 on 2 MB
    pages, 1.25x faster). In bf16 autocast on a CPU with bf16 units huge pages were slower with torch's softmax
    and dropout ops and as fast with the compiled kernels, so there they stay off. It is torch's own switch,
    read once at its first allocation of 2 MB or more, so `txl` calls this before a command imports torch. A
    value the user set is kept.
    """
    if sys.platform.startswith("linux") and not cpu_has_bf16_units():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap (glibc only); returns whether the setting was applied.

    By default glibc hands every allocation over 32 MB (e.g. the (B, H, T, K) attention scores from batch 8
    up) to a fresh mmap, so each segment pays for zeroing its pages again: measured 1.5-2x slower at batch 16.
    The price is a resident set that stays at its peak instead of shrinking between batches.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's `malloc_trim`); returns whether it ran.

    Batches of changing shapes fragment the heap: freed chunks that no later request fits stay resident,
    with glibc's default as with `tune_cpu_allocator`, and the resident set only grows (fine-tuning MiniLM on
    20newsgroups: 6.5 GB after a minute, 13 GB after an hour). Long loops call it between steps
    (`FreeMemoryEvery`); the next step pays once for fresh pages. Measured on a MiniLM run on imdb: one call
    took the resident set from 9.4 GB to 2.1 GB.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True


class FreeMemoryEvery:
    """`tick()` after each step of a long loop: `release_free_memory` at most once per `seconds`."""

    def __init__(self, seconds: float = 60.0):
        self.seconds, self.last = seconds, time.monotonic()

    def tick(self) -> bool:
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return release_free_memory()
