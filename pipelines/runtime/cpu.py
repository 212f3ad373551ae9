"""What this CPU has, read without importing torch (the `txl` entry point asks before torch loads)."""


def cpu_has_bf16_units() -> bool:
    """Whether /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (Linux; False elsewhere), read without torch."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
