"""Data-parallel training on 1, 2 and 4 MPI ranks, and gradient caching's memory.

    python benchmarks/bench_distributed.py [--ranks 1 2 4] [--steps 12]
        [--model bag|transformer|both]
    python benchmarks/bench_distributed.py --memory [--runs 128:0 256:0 1024:256 1024:64]
    python benchmarks/bench_distributed.py --project    (docs/scaling.md's model: 8-64 GPU ranks)

Ranks: each R is one ``mpiexec -n R`` job (the mpich wheel's; ``pip install -e ".[mpi]"``)
running ``minembed.product.distributed.make_step`` + Adam on synthetic batches, the same global
batch for every R (each rank encodes B/R pairs):
  bag          B = 256 pairs, 512 views of 32-64 Zipf-like ids, V = 30,000, D = 256 (bench_bag's)
  transformer  B = 64 pairs, views of 32-64 ids, V = 30,000, 2 layers, d = 128, FFN 512, dropout 0.1
Per step (median over steps, after 2 warm-up steps): the step's wall time on rank 0, the time
its collectives took (waiting for the slowest rank included), and the bytes
one rank receives in the collectives' ring algorithms (all-gather: (R-1)/R of the gathered
array; all-reduce: 2 (R-1)/R of the array). With more ranks than cores, MPICH's ring all-gather
(its default for large messages) pays a context switch per segment (1.3 s for 3 MB on 4 ranks
here): such runs use MPIR_CVAR_ALLGATHERV_INTRA_ALGORITHM=recursive_doubling (25 ms). Then the
RowGrad sum both ways
(gathered rows + merge, dense all-reduce of the (V, D+1) table), to check the choice.

Memory (--memory): one step of the transformer (4 layers, d = 256, 4 heads, FFN 1024, views
of 64-128 ids, dropout 0.1) for each BATCH:MICRO of --runs (micro 0: the whole batch at once),
each in its own process: peak resident memory (ru_maxrss), the peak of NumPy's allocations
during the step (tracemalloc), and the step's time. The whole batch of 1024 pairs would need
about 16x the 64-pair step's memory (> 20 GB, more than this machine): its row is measured
at 128 and 256 pairs, where memory grows in proportion to the batch.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import shutil
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minembed.core import bag, optim, transformer  # noqa: E402
import minembed.product.distributed as dist  # noqa: E402
from minembed.product.settings import TrainConfig  # noqa: E402

V = 30_000
WORK = {"bag": dict(B=256, lo=32, hi=64, cfg=dict(model="bag", dim=256)),
        "transformer": dict(B=64, lo=32, hi=64,
                            cfg=dict(model="transformer", dim=128, layers=2, heads=4, ffn=512,
                                     max_len=64, dropout=0.1))}
_ZIPF_CDF = np.cumsum(1.0 / (np.arange(V) + 10.0))
_ZIPF_CDF /= _ZIPF_CDF[-1]


def make_batch(rng, B, lo, hi):
    lengths = rng.integers(lo, hi + 1, 2 * B)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    ids = np.searchsorted(_ZIPF_CDF, rng.random(int(offsets[-1])), side="right").clip(0, V - 1)
    return ids.astype(np.int32), offsets


def setup(model, cfg):
    enc = bag if model == "bag" else transformer
    ecfg = dict(cfg, vocab_size=V)
    params = enc.init_params(ecfg, np.random.default_rng(0))
    return enc, ecfg, params, TrainConfig(**{k: v for k, v in cfg.items()
                                             if k in ("model", "dim")}).resolved()


def worker(model, steps):
    """One rank of an mpiexec job: timed steps; rank 0 prints one JSON line."""
    from mpi4py import MPI
    comm = dist.Comm(MPI.COMM_WORLD)
    w = WORK[model]
    enc, ecfg, params, tcfg = setup(model, w["cfg"])
    adam, step = optim.adam_init(params), dist.make_step(comm)
    R, sent, spent = comm.size, [0], [0.0]  # bytes one rank receives (ring algorithms), seconds
    gather, reduce = comm.allgather, comm.allreduce

    def timed(f, x, nbytes, *a):
        sent[0] += nbytes
        t0 = time.perf_counter()
        out = f(x, *a)
        spent[0] += time.perf_counter() - t0
        return out
    comm.allgather = lambda x, counts: timed(
        gather, x, x.nbytes // max(1, len(x)) * sum(counts) * (R - 1) // R, counts)
    comm.allreduce = lambda x: timed(reduce, x, 2 * x.nbytes * (R - 1) // R)
    times, comms, moved = [], [], []
    for s in range(steps + 2):
        rng = np.random.default_rng([0, 2, s])
        ids, offsets = make_batch(rng, w["B"], w["lo"], w["hi"])
        c0, b0 = spent[0], sent[0]
        comm.mpi.Barrier()
        t0 = time.perf_counter()
        loss, acc, grads = step(enc, params, ecfg, ids, offsets, tcfg, rng)
        optim.clip_grads(grads, 1.0)
        optim.adam_step(params, grads, adam, 1e-3)
        t = time.perf_counter() - t0
        if s >= 2:
            times.append(t)
            comms.append(spent[0] - c0)
            moved.append(sent[0] - b0)
    # the RowGrad sum both ways, on this step's gradient of the table (bag only)
    merge = {}
    if model == "bag" and R > 1:
        ids, offsets = make_batch(np.random.default_rng([9, R]), w["B"] // R, w["lo"], w["hi"])
        g = bag.backward(np.ones((len(offsets) - 1, 256), np.float32),
                         bag.forward(params, ids, offsets)[1])
        for name, factor in (("rows", 1e9), ("dense", 0.0)):
            dist.SPARSE_FACTOR, ts = factor, []
            for _ in range(5):
                comm.mpi.Barrier()
                t0 = time.perf_counter()
                comm.sum_grads({"tok_emb": g["tok_emb"]}, params)
                ts.append(time.perf_counter() - t0)
            merge[name] = 1e3 * statistics.median(ts)
        merge["rows_per_rank"] = len(g["tok_emb"].rows)
    if comm.rank == 0:
        print(json.dumps(dict(model=model, ranks=R, step_ms=1e3 * statistics.median(times),
                              comm_ms=1e3 * statistics.median(comms),
                              mbytes=statistics.median(moved) / 1e6,
                              pairs_per_s=WORK[model]["B"] / statistics.median(times),
                              merge=merge)))


def memory_worker(batch, micro):
    import tracemalloc
    cfg = dict(model="transformer", dim=256, layers=4, heads=4, ffn=1024, max_len=128, dropout=0.1)
    enc, ecfg, params, tcfg = setup("transformer", cfg)
    rng = np.random.default_rng([0, 2, 1])
    ids, offsets = make_batch(rng, batch, 64, 128)
    step = dist.make_step(micro_batch=micro)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    loss, _, grads = step(enc, params, ecfg, ids, offsets, tcfg, rng)
    t = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    print(json.dumps(dict(batch=batch, micro=micro, loss=loss, seconds=t, alloc_peak_gb=peak / 1e9,
                          rss_gb=rss)))


# --project: an alpha-beta model of a step on R GPU ranks, each with b pairs (weak scaling:
# B = R b). Compute: one H200's measured step at b pairs (README: bag b = 4096, 2.57 ms;
# transformer b = 256, 62.3 ms) minus its loss, plus the loss every rank computes on all B
# pairs: 6 B^2 D flop at F. Collectives (NCCL): an all-gather of N bytes costs
# (R-1)/R N / beta, an all-reduce 2 (R-1)/R N / beta, each plus alpha log2 R; two tiny ones
# (row counts, stop flag) cost alpha log2 R each. "Sharded": each rank computes only its b
# anchors' loss rows against all B positives (6 b B D flop, (b, B) matrices) and a
# reduce-scatter of dL/dp ((R-1)/R 4 B D bytes) gives each rank its positives' gradient.
# bus bandwidth (B/s) and latency (s): in a node, across
NVLINK, IB = (350e9, 10e-6), (45e9, 25e-6)
F = 40e12                                      # fp32 matmul flop/s reached by the loss's products
MODELS = {"bag": dict(b=4096, step=2.57e-3, D=256, V=30_000, P=0, U=25_000),
          "transformer": dict(b=256, step=62.3e-3, D=256, V=30_000, P=3.2e6, U=10_000)}


def project(model, R):
    m = MODELS[model]
    B, D, V = R * m["b"], m["D"], m["V"]
    beta, alpha = NVLINK if R <= 8 else IB
    lat = alpha * np.log2(R)
    loss = lambda n: 6 * n * n * D / F  # noqa: E731
    gather = 8 * B * D * (R - 1) / R                               # (B, 2, D) float32
    dense = 2 * 4 * m["P"] * (R - 1) / R                            # the dense gradients
    rows = min((R - 1) * m["U"] * (4 * D + 8), 2 * 4 * V * (D + 1) * (R - 1) / R)  # the table's
    moved = gather + dense + rows
    comm = moved / beta + lat * (4 + (m["P"] > 0))
    compute = m["step"] - loss(m["b"]) + loss(B)
    # S, P and g: (B, B) float32 each
    fits = 12 * B * B < 100e9
    sharded = (m["step"] - loss(m["b"]) + 6 * m["b"] * B * D / F + comm
               + 4 * B * D * (R - 1) / R / beta + lat)
    return dict(B=B, moved=moved, comm=comm, compute=compute, step=compute + comm, fits=fits,
                sharded=sharded)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", choices=["bag", "transformer", "both"], default="both")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--runs", nargs="+", default=["128:0", "256:0", "1024:256", "1024:64"])
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--project", action="store_true")
    a = ap.parse_args()
    if a.project:
        print("| model | GPU ranks | global batch | MB received per rank | communication ms | "
              "compute ms (of it the loss) | step ms | pairs/s | sharded loss: step ms, pairs/s |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model in MODELS:
            for R in (1, 8, 16, 32, 64):
                p = project(model, R)
                loss = 6 * p["B"] ** 2 * MODELS[model]["D"] / F
                step = (f"{1e3 * p['compute']:.1f} ({1e3 * loss:.1f}) | {1e3 * p['step']:.1f} | "
                        f"{p['B'] / p['step']:,.0f}") if p["fits"] else \
                    f"(B, B) matrices: {12 * p['B'] ** 2 / 1e9:.0f} GB, do not fit | – | –"
                print(f"| {model} | {R} | {p['B']:,} | {p['moved'] / 1e6:.1f} | "
                      f"{1e3 * p['comm']:.2f} | {step} | {1e3 * p['sharded']:.1f}, "
                      f"{p['B'] / p['sharded']:,.0f} |")
        return
    if a.worker:
        return (memory_worker(*map(int, a.runs[0].split(":"))) if a.memory
                else worker(a.model, a.steps))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    me = [sys.executable, os.path.abspath(__file__), "--worker"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if a.memory:
        print("transformer (4 layers, d 256, FFN 1024), views of 64-128 ids, dropout 0.1")
        print("| global batch | micro-batch | peak RSS | peak NumPy allocations | step s |\n"
              "|---:|---:|---:|---:|---:|")
        for run in a.runs:
            batch, m = run.split(":")
            out = subprocess.run(me + ["--memory", "--runs", run], env=env,
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {batch} | {m} | failed: {out.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {batch} | {int(m) or 'whole batch'} | {r['rss_gb']:.2f} GB | "
                  f"{r['alloc_peak_gb']:.2f} GB | {r['seconds']:.1f} |", flush=True)
        return
    mpiexec = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    print("| model | ranks | step ms | communication ms | MB received per rank | pairs/s | "
          "RowGrad sum: rows / dense ms |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for model in (["bag", "transformer"] if a.model == "both" else [a.model]):
        for n in a.ranks:
            e = dict(env)
            if n > os.cpu_count():
                e.setdefault("MPIR_CVAR_ALLGATHERV_INTRA_ALGORITHM", "recursive_doubling")
            out = subprocess.run([mpiexec, "-n", str(n)] + me
                                 + ["--model", model, "--steps", str(a.steps)],
                                 env=e, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            m = r["merge"]
            merge = f"{m['rows']:.1f} / {m['dense']:.1f} ({m['rows_per_rank']:,} rows each)" \
                if m else "–"
            print(f"| {model} | {n} | {r['step_ms']:.1f} | {r['comm_ms']:.1f} | {r['mbytes']:.2f} "
                  f"| {r['pairs_per_s']:.0f} | {merge} |", flush=True)


if __name__ == "__main__":
    main()
