"""The `txl` commands (train, classify, evaluate, fuse, baseline, pretrain, app) and what they share."""
import os as _os
import sys as _sys


def cpu_has_bf16_units() -> bool:
    """Whether /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (Linux; False elsewhere), read without torch."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Large tensors on transparent huge pages (torch's own switch, read once, at its first allocation of 2 MB or
# more, so it is set here, before the commands allocate) where the commands run float32: CPUs without bf16 units.
# Fine-tuning allocates the (B, H, T, K) attention tensors afresh at every step and glibc faults their 4 kB pages
# in again each time: float32 MiniLM on bbc_news took 554,000 page faults a step on 4 kB pages, 834 on 2 MB pages,
# and ran 1.25x faster (1.2x in float32 on a CPU with bf16 units). In bf16 autocast on that CPU it ran 1.2x
# slower on huge pages with torch's softmax and dropout ops, and as fast with the compiled kernels
# (benchmarks/train_speed.py, RESULTS.md), so there it stays off. A value the user set is kept.
if _sys.platform.startswith("linux") and not cpu_has_bf16_units():
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
