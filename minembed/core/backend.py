"""NumPy or CuPy: one code path for both.

Every function in minembed takes its array module from its inputs (``xp_of``) instead of
importing CuPy, so the package imports and runs where CuPy is absent. ``get_xp(device)`` turns
a user's ``--device cpu|gpu|auto`` into a module; ``to_numpy`` brings any array to the host.
"""
import functools

import numpy as np

from ..errors import MinembedError


@functools.cache
def _try_cupy():
    """Import CuPy once, lazily; None when it is missing or no GPU is usable."""
    try:
        import cupy  # optional dependency, never imported at top level
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


def gpu_available():
    return _try_cupy() is not None


def xp_of(*arrays):
    """The array module (numpy or cupy) of the given arrays."""
    return _try_cupy() if any(type(a).__module__.startswith("cupy") for a in arrays) else np


def get_xp(device="cpu"):
    """Map a device name (cpu, gpu, auto) to an array module."""
    if device == "cpu":
        return np
    if device in ("gpu", "cuda"):
        cp = _try_cupy()
        if cp is None:
            raise MinembedError("--device gpu: CuPy with a usable GPU was not found "
                                "(pip install -e '.[gpu]' on a machine with a CUDA GPU)")
        return cp
    if device == "auto":
        return _try_cupy() or np
    raise MinembedError(f"unknown device {device!r} (expected cpu, gpu or auto)")


BLOCK = 1 << 16  # numbers a block (256 KB of float32: a few such stay in the L2 cache)


def row_blocks(a):
    """Slices of a's first axis, about BLOCK numbers each (one on a GPU): a chain of passes run
    block by block reads and writes main memory once, not once a pass."""
    n = a.shape[0]
    k = max(1, BLOCK // max(1, a[:1].size)) if xp_of(a) is np else max(1, n)
    return [slice(s, s + k) for s in range(0, n, k)]


def to_numpy(a):
    """Host copy of an array (a no-op for NumPy arrays)."""
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def to_device(a, xp):
    """Move a host array to the module ``xp`` (no copy when already there)."""
    return to_numpy(a) if xp is np else xp.asarray(a)
