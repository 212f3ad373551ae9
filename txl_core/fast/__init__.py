"""Fast paths of txl_core: compiled CPU kernels, packed bf16 linear layers, kept keys and values, cheap dropout.

Each equals the plain torch computation it replaces (tests/test_fused.py, test_dropout.py, test_kept_kv.py);
`routes.attention_route` is the one place an attention step picks its path.
"""
