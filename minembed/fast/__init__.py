"""The workshop: fast twins of reference functions, plugged in by one mechanism.

A reference function marked ``@twin`` (minembed/core/backend.py) runs, on arrays of one module,
the twin registered here for that module: ``cpu.TWINS`` for NumPy arrays (CSR sparse products,
cache-blocked passes), ``cuda`` for CuPy arrays (the CUDA kernels of kernels.cu; each falls back
to the reference where its kernel does not apply). Importing minembed registers them all;
``reference_only()`` runs the references instead (lessons, tests, timings).
"""
import contextlib

from ..core import backend
from . import cpu, cuda


def register(array_module, twins):
    """{reference function: its fast twin} for arrays of ``array_module`` ("numpy", "cupy")."""
    for reference, fast in twins.items():
        backend.TWINS[(array_module, reference.key)] = fast


@contextlib.contextmanager
def reference_only():
    """Inside: every marked function runs its reference, whatever the arrays."""
    before, backend.use_twins = backend.use_twins, False
    try:
        yield
    finally:
        backend.use_twins = before


register("numpy", cpu.TWINS)
register("cupy", cuda.TWINS)
