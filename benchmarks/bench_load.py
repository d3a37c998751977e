"""The default ``minembed train`` (bag model, built-in corpus) on a quiet and on a loaded machine.

    python benchmarks/bench_load.py [--load 0,1] [--threads default,2] [--repeats 2] [--model bag]

For each load (N busy processes started beside it, a core each) and each thread setting
(``default``: minembed's choice; a number: ``--threads N``, e.g. 2 = what OpenBLAS does unasked
on 2 cores), runs ``minembed train -q`` in a subprocess and reports its wall time (median of the
repeats, interleaved) and the slowdown against load 0 with the same setting. The built-in
corpus and its tokenizer are built once first (cached), so the times are training's alone.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", default="0,1", help="busy processes beside the run, a list")
    ap.add_argument("--threads", default="default,2",
                    help="default (minembed's choice) or N, a list")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="bag")
    ap.add_argument("--max-steps", type=int, default=0, help="0: the default run (all its steps)")
    args = ap.parse_args()
    loads, settings = [int(x) for x in args.load.split(",")], args.threads.split(",")
    out = tempfile.mkdtemp(prefix="bench_load_")
    base = [sys.executable, "-m", "minembed", "train", "--model", args.model, "-q", "--force",
            "-o", os.path.join(out, "m")] + (["--max-steps", str(args.max_steps)]
                                             if args.max_steps else [])
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    env.pop("MINEMBED_THREADS", None)
    subprocess.run(base + ["--max-steps", "1"], check=True, env=env)  # builds the corpus cache
    times = {(n, s): [] for n in loads for s in settings}
    for _ in range(args.repeats):
        for n in loads:
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
            try:
                time.sleep(0.5)
                for s in settings:
                    t = time.perf_counter()
                    subprocess.run(base + ([] if s == "default" else ["--threads", s]),
                                   check=True, env=env)
                    times[n, s].append(time.perf_counter() - t)
            finally:
                for p in busy:
                    p.kill()
    print(f"minembed train --model {args.model} (built-in corpus), {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f} at the end; median of {args.repeats}\n")
    print("| threads | " + " | ".join(f"load {n}" for n in loads) + " | slowdown |")
    print("|---|" + "---:|" * (len(loads) + 1))
    for s in settings:
        med = [statistics.median(times[n, s]) for n in loads]
        print(f"| {s} | " + " | ".join(f"{m:.1f} s" for m in med) + f" | {med[-1] / med[0]:.2f}x |")


if __name__ == "__main__":
    main()
