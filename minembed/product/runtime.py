"""How the process runs the numbers: on which device (``get_xp``), and around training and
encoding with how many threads (``with tuned(model, threads):``).

Devices: ``--device cpu|gpu|auto`` becomes an array module, numpy or CuPy (imported here only,
lazily, so the package runs where CuPy is absent); the textbook takes its module from the arrays.

BLAS threads (threadpoolctl): ``threads`` (``--threads``), else MINEMBED_THREADS, else chosen.
OpenBLAS's idle workers spin after each product, so threads beyond the idle cores oversubscribe
(a core busy elsewhere made the bag training 5-7x slower, a transformer step up to 30x). The bag
model's products are small (InfoNCE's): one thread. The transformer gets the idle cores: the
cores we may use less the threads of other processes running now (/proc/loadavg; the load
average lags a minute behind), at least one. OpenBLAS splits a product's rows and columns among
threads, never a sum, but the kernels for the edges of each part differ, so the count can change
the last bits of a product: a training run records its count and a resumed run keeps it.

The allocator (glibc, transformer only): freed blocks over 32 MB went back to the system, so each
step's (tokens, ffn) activations came back as fresh pages for the kernel to zero; keeping them
for reuse made a step 4-11% faster at the same peak memory.
"""
import contextlib
import ctypes
import functools
import os
import platform
import sys
import time

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


_cache = [None, None]  # (modules loaded, ThreadpoolController): scanning the libraries takes ~2 ms
_active = []  # the thread counts of the contexts we are inside
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def prefetch_batches(device):
    """Whether training draws each step's pairs ahead, on a thread (minembed/fast/prefetch.py):
    on a GPU, where the host would otherwise sample while the device waits.
    MINEMBED_PREFETCH=1 or 0 decides instead (benchmarks compare the two)."""
    chosen = os.environ.get("MINEMBED_PREFETCH", "")
    return chosen == "1" if chosen in ("0", "1") else device == "gpu"


def choose_threads(model=None, threads=None, default=None):
    """How many BLAS threads ``model`` ("bag", "transformer"; None: other work) gets: ``threads``,
    else MINEMBED_THREADS, else ``default`` (a count to keep: a resumed run's, a process's share
    of the machine), else chosen for the model."""
    threads = threads or os.environ.get("MINEMBED_THREADS") or default
    if threads is not None:
        if not str(threads).isdigit() or int(threads) < 1:
            raise MinembedError("--threads / MINEMBED_THREADS must be a positive integer, got "
                                f"{threads!r}")
        return int(threads)
    if model == "bag":
        return 1
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, min(cores, cores - _busy_elsewhere()))


def _busy_elsewhere(samples=3):
    """Threads of other processes running or waiting to run now: the most of a few looks
    2 ms apart at /proc (Linux); elsewhere the load average (1 min: it lags)."""
    try:
        counts = []
        for i in range(samples):
            time.sleep(0.002 * (i > 0))
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            for task in os.listdir("/proc/self/task"):  # less this process's own
                with open(f"/proc/self/task/{task}/stat") as f:
                    running -= f.read().rsplit(")", 1)[1].split()[0] == "R"
            counts.append(running)
        return max(counts)
    except (OSError, ValueError, IndexError):
        return round(getattr(os, "getloadavg", lambda: (0.0,))()[0])


def _mallopt(mmap_threshold, trim_threshold, trim=False):
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        if trim:
            libc.malloc_trim(0)


@contextlib.contextmanager
def tuned(model=None, threads=None):
    """Inside: BLAS (and OpenMP) limited to ``choose_threads(model, threads)`` threads, and for
    the transformer freed memory kept for reuse. Inside another such context the outer thread
    count holds unless one is given (threads, MINEMBED_THREADS)."""
    from threadpoolctl import ThreadpoolController
    explicit = threads or os.environ.get("MINEMBED_THREADS")
    n = _active[-1] if _active and not explicit else choose_threads(model, threads)
    if _cache[0] != len(sys.modules):
        _cache[:] = len(sys.modules), ThreadpoolController()
    keep = model == "transformer" and not _active
    if keep:
        _mallopt(1 << 30, 1 << 30)
    try:
        with _cache[1].limit(limits=n):
            _active.append(n)
            try:
                yield n
            finally:
                _active.pop()
    finally:
        if keep:  # glibc's own limits again (the largest its dynamic ones reach), memory returned
            _mallopt(32 << 20, 64 << 20, trim=True)
