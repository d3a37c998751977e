"""The workshop: fast twins of some reference functions (cache-blocked NumPy, CUDA kernels)."""
