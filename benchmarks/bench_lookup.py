"""The transformer's token lookups and mean pooling (forward + backward) as the bag layer
does them (docs/DESIGN.md), against the plain NumPy ways, interleaved in one process.

    python benchmarks/bench_lookup.py [--repeats 30]

Workload: a default transformer batch, 128 views (64 pairs) of 30-90 tokens (~7.7k packed rows),
D = 128, a 16k vocabulary with Zipf-like ids. Each runner does the lookup table[ids] and its
row gradient (distinct rows, summed), then the mean over each view's rows and its backward.
- bag layer:   bag.embedding_bag_forward/backward (views of one token; views of rows)
- np.add.at:   table[ids]; np.unique + np.add.at; np.add.reduceat / np.repeat for the pooling
- sort+reduce: table[ids]; argsort + np.add.reduceat for the rows; the same pooling
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minembed.core import bag  # noqa: E402
from minembed.product.runtime import tuned  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    V, D, N = 16384, 128, 128
    lens = rng.integers(30, 90, N)
    M = int(lens.sum())
    starts = np.r_[0, np.cumsum(lens)].astype(np.int64)
    table = rng.standard_normal((V, D), dtype=np.float32)
    ids = (rng.zipf(1.2, M) % V).astype(np.int32)
    x, dx_in = (rng.standard_normal((M, D), dtype=np.float32) for _ in "xd")
    demb = rng.standard_normal((N, D), dtype=np.float32)
    one = np.arange(M + 1)

    def pool(x, demb):
        emb = np.add.reduceat(x, starts[:-1]) / lens[:, None]
        return emb, np.repeat(demb / lens[:, None], lens, axis=0)

    def bag_layer():
        _, c = bag.embedding_bag_forward(table, ids, one)
        bag.embedding_bag_backward(dx_in, c)
        _, c = bag.embedding_bag_forward(x, np.arange(M), starts)
        bag.embedding_bag_backward(demb, c)

    def add_at():
        table[ids]
        u, inv = np.unique(ids, return_inverse=True)
        g = np.zeros((len(u), D), np.float32)
        np.add.at(g, inv, dx_in)
        pool(x, demb)

    def sort_reduce():
        table[ids]
        o = np.argsort(ids, kind="stable")
        s = ids[o]
        np.add.reduceat(dx_in[o], np.flatnonzero(np.r_[True, s[1:] != s[:-1]]))
        pool(x, demb)

    runners = {"bag layer": bag_layer, "np.add.at": add_at, "sort+reduce": sort_reduce}
    times = {k: [] for k in runners}
    with tuned("transformer"):
        for _ in range(args.repeats):
            for k, f in runners.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    print(f"{N} views, {M} rows, D = {D}, V = {V}: lookup + pooling, forward + backward (median "
          "ms)")
    best = min(np.median(v) for k, v in times.items() if k != "bag layer")
    for k, v in times.items():
        print(f"  {k:12s} {1e3 * np.median(v):7.2f} ms   / best plain {np.median(v) / best:.2f}")


if __name__ == "__main__":
    main()
