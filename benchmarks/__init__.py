"""The benchmarks behind benchmarks/RESULTS.md, each run from the repository root as `python -m benchmarks.NAME`."""
