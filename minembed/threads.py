"""BLAS threads for the work at hand (threadpoolctl): ``threads`` (``--threads``), else
MINEMBED_THREADS, else chosen. OpenBLAS's idle workers spin after each product, so more
threads than idle cores oversubscribe: with one core of two busy elsewhere, the default
bag training took 5-7x its time and a transformer step up to 30x. The bag model's products
are small (the InfoNCE matrices): one thread. The transformer's GEMMs get the idle cores:
the cores this process may run on less the load average (the threads running, averaged
over the last minute) that is not this process's own, at least one. The results do not
depend on the count (OpenBLAS splits a product's rows and columns among its threads, never
a sum)."""
import contextlib
import math
import os
import sys
import time

from .errors import MinembedError

_cache = [None, None]  # (modules loaded, ThreadpoolController): scanning the libraries takes ~2 ms
_active = []  # the counts of the limits we are inside
_T0 = time.monotonic(), time.process_time()  # this process's own load: CPU seconds since then


def choose(model=None, threads=None):
    """How many BLAS threads ``model`` ("bag", "transformer"; None: other work) gets."""
    threads = threads or os.environ.get("MINEMBED_THREADS") or None
    if threads is not None:
        if not str(threads).isdigit() or int(threads) < 1:
            raise MinembedError(f"--threads / MINEMBED_THREADS must be a positive integer, got {threads!r}")
        return int(threads)
    if model == "bag":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # the load average is an exponential average (1 min): a process using r cores for the last
    # t seconds adds r (1 - exp(-t / 60)); it lags a load that just began, which the threads
    # running now (/proc/loadavg) show
    t = max(1e-3, time.monotonic() - _T0[0])
    own = (time.process_time() - _T0[1]) / t * (1 - math.exp(-t / 60))
    load = max(getattr(os, "getloadavg", lambda: (0.0,))()[0] - own, _running_elsewhere())
    return max(1, min(cores, round(cores - load)))


def _running_elsewhere():
    """Threads of other processes running or waiting to run right now (Linux), else 0."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        for task in os.listdir("/proc/self/task"):  # less this process's own
            with open(f"/proc/self/task/{task}/stat") as f:
                running -= f.read().rsplit(")", 1)[1].split()[0] == "R"
        return running
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def limit(model=None, threads=None):
    """BLAS (and OpenMP) limited to ``choose(model, threads)`` threads inside; a limit
    inside another one keeps the outer count unless given one (threads, MINEMBED_THREADS)."""
    from threadpoolctl import ThreadpoolController
    explicit = threads or os.environ.get("MINEMBED_THREADS")
    n = _active[-1] if _active and not explicit else choose(model, threads)
    if _cache[0] != len(sys.modules):
        _cache[:] = len(sys.modules), ThreadpoolController()
    with _cache[1].limit(limits=n):
        _active.append(n)
        try:
            yield n
        finally:
            _active.pop()
