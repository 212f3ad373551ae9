"""Build the optional CPU kernels: `python -m txl_core.fast.build_kernels` (`bash run.sh setup` runs it).

Prints one line: built (and where), or why not; the pure-torch path works either way, so it always exits 0.
"""
from __future__ import annotations

from txl_core.fast import fused


def main() -> int:
    if fused.variant() is None:
        print("txl_core.fast.build_kernels: this CPU has neither AVX512-BF16 nor AVX2 with FMA; the pure-torch path is "
              "used, nothing to build")
        return 0
    try:
        lib = fused.build()
    except Exception as e:  # no compiler, no headers: the fallback still works
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f"txl_core.fast.build_kernels: not built ({why}); the pure-torch path is used")
        return 0
    print(f"txl_core.fast.build_kernels: built the {fused.variant()} kernels, {lib}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
