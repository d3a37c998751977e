"""Compiling and launching the CUDA kernels of kernels.cu: the module compiled once, lazily, with
``cupy.RawModule`` (NVRTC); CuPy imported only inside functions, so this imports where CuPy is
absent. ``use_kernels`` says when the kernels apply (CuPy arrays, float32, kernels enabled: set
``MINEMBED_CUDA_KERNELS=0`` or ``ENABLED = False`` to run the references on CuPy instead)."""
import os
from pathlib import Path

import numpy as np


KERNEL_FILE = Path(__file__).resolve().parent / "kernels.cu"
ENABLED = os.environ.get("MINEMBED_CUDA_KERNELS", "1") != "0"
SEG_PIECE = 32        # must equal SEG_PIECE in kernels.cu (checked by the tests)
THREADS = 256         # threads per block for the elementwise and row kernels

# every kernel a wrapper launches (tests check each is an .entry in the PTX)
KERNEL_NAMES = (
    "embedding_bag_forward", "segment_flags", "segment_bounds",
    "segment_sum_partial", "segment_sum_combine",
    "adam_update", "adam_update_rows",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "softmax_forward", "softmax_backward", "infonce_rows",
)

_module = None
_functions = {}


def kernel_source():
    """The CUDA source text of all kernels."""
    return KERNEL_FILE.read_text()


def cupy():
    import cupy  # optional dependency: never imported at module top level
    return cupy


def kernel(name):
    """The compiled kernel ``name`` (the module is compiled on first use)."""
    global _module
    fn = _functions.get(name)
    if fn is None:
        if _module is None:
            _module = cupy().RawModule(code=kernel_source())
        fn = _functions[name] = _module.get_function(name)
    return fn


def enabled():
    return ENABLED


def use_kernels(*arrays):
    """True when the custom kernels should handle these arrays: kernels are
    enabled, every array is a CuPy array, and the floating ones are float32."""
    if not ENABLED:
        return False
    for a in arrays:
        if a is None:
            continue
        if not type(a).__module__.startswith("cupy"):
            return False
        if a.dtype.kind == "f" and a.dtype != np.float32:
            return False
    return True


def f32(a):
    """A C-contiguous float32 CuPy array (no copy when it already is one)."""
    cp = cupy()
    a = cp.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"minembed's CUDA kernels take float32 arrays, got {a.dtype}")
    return cp.ascontiguousarray(a)


def grid(n, threads=THREADS, cap=65536):
    """Blocks for a grid-stride loop over n items."""
    return (max(1, min(cap, -(-int(n) // threads))),)


def row_block(d):
    """Threads for a block that loops over d columns."""
    return (min(THREADS, max(32, -(-int(d) // 32) * 32)),)


def sm_count():
    return cupy().cuda.Device().attributes["MultiProcessorCount"]


