"""What the benchmarks share: background load on demand, thread counts, the machine line."""
import atexit
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minembed.product import runtime  # noqa: E402


def add_options(ap):
    ap.add_argument("--threads", type=int, default=None,
                    help="NumPy's BLAS threads [minembed's choice for the model: "
                         "minembed/product/runtime.py]")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="PyTorch's threads [the idle cores: its best on a quiet machine]")
    ap.add_argument("--load", type=int, default=0,
                    help="start N busy processes (a core each) for the run: a loaded machine")


def setup(args, model):
    """Start the load; BLAS threads (and the allocator) as minembed sets them for ``model``, for
    the whole process; returns (ours, torch's) thread counts."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    atexit.register(lambda: [p.kill() for p in procs])
    theirs = args.torch_threads or runtime.choose_threads("transformer")
    tuned = runtime.tuned(model, args.threads)  # as minembed train / encode run (both sides)
    ours = tuned.__enter__()
    atexit.register(tuned.__exit__, None, None, None)
    return ours, theirs


def machine(args, ours, theirs):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} cores, load average {os.getloadavg()[0]:.1f} (--load {args.load}: busy "
            f"processes started for this run); threads: NumPy BLAS {ours}, PyTorch {theirs}")
