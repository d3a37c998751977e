"""The tables of docs/export.md: Matryoshka and quantised vectors on the built-in
corpus, and embedding a 1 GB file with bounded memory.

    python benchmarks/bench_export.py matryoshka --models DIR   # trains what DIR lacks (~8 min)
    python benchmarks/bench_export.py quantize --models DIR
    python benchmarks/bench_export.py embed --models DIR --gb 1  # generates ~1 GB of text

matryoshka: kNN accuracy (k = 10, cosine, mean ± sd over the 90/10 splits of seeds
0..9) of a model trained with --matryoshka 32,64,128,256 at each of those
dimensions (encode(dim=k)), next to a model trained at that dimension alone and to
the first k dimensions of the plain 256-dimensional model. Every model is the
default bag model (800 steps, seed 0), only --dim / --matryoshka differ.

quantize: the same kNN accuracy of float32, float16, int8 (dequantised, cosine) and
binary (Hamming distance on the sign bits) vectors, for the plain model and the
Matryoshka model at each dimension. int8 scales: `minembed quantize` on the built-in
corpus (all 2,717 documents; the same texts the kNN splits use).

embed: `minembed embed MODEL big.txt -o x.npy` in a subprocess on a generated file
(benchmarks/bench_scale.py's generator), its wall time and peak RSS (VmHWM).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import minembed
from minembed.product.evaluate import knn_accuracy
from minembed.product.export import calibrate, dequantize, int8_scales, quantize
from minembed.product.run import train
from minembed.product.settings import TrainConfig

DIMS = (32, 64, 128, 256)
SEEDS = range(10)


def model(models, name, **cfg):
    path = os.path.join(models, name)
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        print(f"training {name} ({cfg})", file=sys.stderr, flush=True)
        train(None, path, TrainConfig(**cfg), quiet=True)
    return minembed.load(path)


def knn(X, labels, metric="cosine"):
    """kNN accuracy (%) on each split."""
    return 100 * np.array([knn_accuracy(X, labels, metric=metric, seed=s) for s in SEEDS])


def cell(accs, base=None):
    """mean ± sd over the splits; with ``base``, the mean and the mean paired difference."""
    if base is None:
        return f"{accs.mean():.1f} ± {accs.std():.1f}"
    return f"{accs.mean():.1f} ({accs.mean() - base.mean():+.1f})"


def matryoshka(models):
    texts, labels = minembed.builtin()
    mat = model(models, "mat", matryoshka=",".join(map(str, DIMS)))
    plain = model(models, "bag256", dim=256, members=1)  # one table, as the Matryoshka model is
    print("| dim | Matryoshka (32,64,128,256) | trained at this dim alone (Matryoshka's gain) | "
          "plain 256, first k dims (Matryoshka's gain) |")
    print("|---:|---:|---:|---:|")
    for k in DIMS:
        alone = model(models, f"bag{k}", dim=k, members=1)
        with warnings.catch_warnings():   # the plain model was not trained at k: we know
            warnings.simplefilter("ignore")
            row = [knn(mat.encode(texts, dim=k), labels), knn(alone.encode(texts), labels),
                   knn(plain.encode(texts, dim=k), labels)]
        print(f"| {k} | {cell(row[0])} | " +
              " | ".join(f"{cell(r)} ({row[0].mean() - r.mean():+.1f})" for r in row[1:]) +
              " |", flush=True)


def quantized(models):
    texts, labels = minembed.builtin()
    print("| model | dim | float32 | float16 | int8 | binary (Hamming) | "
          "bytes: f32 / f16 / int8 / binary |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, dims in (("bag256", (256,)), ("mat", DIMS)):
        title = "plain 256" if name == "bag256" else "Matryoshka"
        m = model(models, name, **({"dim": 256, "members": 1} if name == "bag256"
                                   else {"matryoshka": "32,64,128,256"}))
        calibrate(m, texts)
        for k in dims:
            X = m.encode(texts, dim=k)
            s = int8_scales(m, k)
            cells = [knn(X, labels), knn(dequantize(quantize(X, "float16"), "float16"), labels),
                     knn(dequantize(quantize(X, "int8", s), "int8", s), labels),
                     knn(dequantize(quantize(X, "binary"), "binary", dim=k) > 0, labels, "hamming")]
            print(f"| {title} | {k} | {cell(cells[0])} | " +
                  " | ".join(cell(c, cells[0]) for c in cells[1:]) +
                  f" | {4 * k} / {2 * k} / {k} / {-(-k // 8)} |", flush=True)


_CHILD = """
import sys, time
from minembed.product.cli import main
t = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("seconds", time.perf_counter() - t)
print("vmhwm_kb", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def embed(models, gb, workdir, keep):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_scale import generate
    m = model(models, "bag256", dim=256, members=1)
    big = os.path.join(workdir, f"corpus-{gb}gb.txt")
    if not os.path.exists(big):
        generate(big, gb)
    out = os.path.join(workdir, "x.npy")
    for dtype in ("float32",):
        r = subprocess.run([sys.executable, "-c", _CHILD, "embed", m.path, big, "-o", out,
                            "--dtype", dtype],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        vals = dict(line.split() for line in r.stdout.splitlines()
                    if line.split()[0] in ("seconds", "vmhwm_kb"))
        X = np.load(out, mmap_mode="r")
        print(f"| {os.path.getsize(big) / 1e9:.2f} GB | {X.shape[0]:,} | {X.shape[1]} {dtype} "
              f"({os.path.getsize(out) / 1e9:.2f} GB) | {float(vals['seconds']):.0f} s | "
              f"{int(vals['vmhwm_kb']) / 1024:.0f} MB |", flush=True)
        print(r.stderr.strip().splitlines()[-2:], file=sys.stderr)
    if not keep:
        os.unlink(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["matryoshka", "quantize", "embed"])
    ap.add_argument("--models", required=True,
                    help="directory of the trained models (made if missing)")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the generated file goes")
    ap.add_argument("--keep", action="store_true", help="keep the embeddings file")
    a = ap.parse_args()
    os.makedirs(a.models, exist_ok=True)
    t0 = time.perf_counter()
    {"matryoshka": lambda: matryoshka(a.models), "quantize": lambda: quantized(a.models),
     "embed": lambda: embed(a.models, a.gb, a.dir, a.keep)}[a.part]()
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
