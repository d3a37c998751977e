"""NumPy or CuPy: one code path for both, and the one way a fast twin plugs in.

Every function takes its array module from its inputs (``xp_of``): numpy for NumPy arrays, and
for another array type the package that defines it (a CuPy array gives CuPy), so
nothing here imports CuPy and the package runs where it is absent.

``@twin`` marks a reference function that a *fast twin* may stand in for: a version with the
same signature and results (to float32 rounding) that is faster on one array module, such as
a cache-blocked NumPy loop or a CUDA kernel. The twins live in ``minembed/fast`` and register
themselves there; the reference never branches into them, and tests hold each twin to its
reference (``f.reference`` is the plain function).
"""
import functools
import sys

import numpy as np

TWINS = {}            # (array module name, "module.function") -> the fast twin
# False: every marked function runs its reference (minembed.fast.reference_only)
use_twins = True


def xp_of(*arrays):
    """The array module of the arrays: numpy, or the package whose array type they are."""
    for a in arrays:
        if a is not None and not isinstance(a, (np.ndarray, np.generic)):
            module = sys.modules.get(type(a).__module__.partition(".")[0])
            if hasattr(module, "asarray"):
                return module
    return np


def to_numpy(a):
    """A host (NumPy) copy of an array; a NumPy array as it is."""
    return np.asarray(a) if isinstance(a, (np.ndarray, np.generic)) else xp_of(a).asnumpy(a)


def to_device(a, xp):
    """The host array ``a`` in the module ``xp`` (no copy when it is there already)."""
    return xp.asarray(a)


def twin(reference):
    """Mark ``reference`` as one a fast twin may replace: a call runs the twin registered for
    the array module of its first argument, if any, else the reference."""
    key = f"{reference.__module__}.{reference.__name__}"

    @functools.wraps(reference)
    def call(*args, **kwargs):
        fast = use_twins and TWINS.get((type(args[0]).__module__.partition(".")[0], key))
        return (fast or reference)(*args, **kwargs)
    call.reference, call.key = reference, key
    return call
