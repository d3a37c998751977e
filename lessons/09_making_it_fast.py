"""Lesson 9: making it fast: where the time goes, vectorisation, CUDA kernels.

What it teaches
    - a profile (cProfile) of real training steps of both encoders: which of
      the package's functions take the time;
    - vectorisation: the same computation as a Python loop and as the
      package's array code (the bag forward as a sparse matrix product, the
      embedding gradient as a segment sum), same numbers, far less time;
    - the CUDA kernels (minembed/kernels/kernels.cu): one file, each kernel
      with a NumPy twin that is its reference. Where CuPy and a GPU are
      present, each kernel is run against its twin and timed; elsewhere the
      lesson says so and shows the source of one kernel.

Run:  python lessons/09_making_it_fast.py          (add --fast for the quick version)
"""
import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np

import minembed
from minembed import Corpus, TrainConfig
from minembed.core import bag, layers, transformer
from minembed.product import runtime
from minembed.fast import cuda
from minembed.core.pairs import PairSampler
from minembed.core.train import train_step

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"


def best_time(f, repeat=3):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


# ---------------------------------------------------------------------------
# 1. A profile of training steps
# ---------------------------------------------------------------------------
source = Corpus()
tok = source.tokenizer(8192)
tc = source.tokenized(tok)
for model, enc, extra in (("bag", bag, dict(dim=256)),
                          ("transformer", transformer, dict(dim=64, layers=2, heads=2, ffn=256,
                                                            max_len=64))):
    cfg = TrainConfig(model=model, batch_size=64, **extra).resolved()
    enc_cfg = cfg.encoder_config(tok.get_vocab_size())
    params = enc.init_params(enc_cfg, np.random.default_rng(0))
    sampler = PairSampler(tc, cfg)
    rng = np.random.default_rng(0)
    steps = 2 if FAST else 5
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for i in range(steps):
        ids, offsets = sampler.sample(sampler.usable[i * 64:(i + 1) * 64], rng)
        loss, acc, grads = train_step(enc, params, enc_cfg, ids, offsets, cfg, rng)
    prof.disable()
    dt = (time.perf_counter() - t0) / steps
    assert np.isfinite(loss)
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    # the package's own functions (files in the package's directory: not numpy's or
    # scipy's, even with a virtual environment inside the clone), by time spent inside them
    own = os.path.dirname(os.path.abspath(minembed.__file__)) + os.sep
    rows = [(v[2], f"{os.path.basename(k[0])}:{k[2]}") for k, v in st.stats.items()
            if os.path.abspath(k[0]).startswith(own)]
    rows.sort(reverse=True)
    total = sum(v[2] for v in st.stats.values())
    print(f"\n{model}: {1e3 * dt:.0f} ms per step of 64 pairs (profiled); the package's functions "
          "taking the most time (own time):")
    for t, name in rows[:6]:
        print(f"   {100 * t / total:5.1f} %  {name}")

# ---------------------------------------------------------------------------
# 2. Vectorisation
#    (a) the bag forward: a Python loop over views, vs one sparse product
# ---------------------------------------------------------------------------
rng = np.random.default_rng(0)
V, D, N = 8192, 256, (512 if FAST else 2048)
table = rng.standard_normal((V, D)).astype(np.float32)
lengths = rng.integers(5, 60, size=N)
offsets = np.r_[0, np.cumsum(lengths)]
ids = rng.integers(0, V, size=offsets[-1]).astype(np.int32)


def bag_loop():
    return np.stack([table[ids[offsets[i]:offsets[i + 1]]].mean(0) for i in range(N)])


out_vec, cache = bag.embedding_bag_forward(table, ids, offsets)
assert np.allclose(bag_loop(), out_vec, atol=1e-5)
t_loop, t_vec = (best_time(bag_loop),
                 best_time(lambda: bag.embedding_bag_forward(table, ids, offsets)))
print(f"\nbag forward, {N} views, {len(ids):,} tokens: Python loop {1e3 * t_loop:.1f} ms, "
      f"sparse product {1e3 * t_vec:.1f} ms ({t_loop / t_vec:.0f}x)")
assert t_vec < t_loop

# (b) the embedding gradient: sum the rows of dy that share a token id.
#     np.add.at is the obvious scatter-add. The bag layer's backward does it as a
#     sparse product (the transpose of the forward's), and with views of one token
#     each it is exactly this scatter: the one the transformer uses for its lookups.
dy = rng.standard_normal((len(ids), D)).astype(np.float32)


def add_at():
    rows = np.unique(ids)
    dense = np.zeros((V, D), np.float32)
    np.add.at(dense, ids, dy)
    return rows, dense[rows]


r1, s1 = add_at()
_, one_each = bag.embedding_bag_forward(table, ids, np.arange(len(ids) + 1))   # views of one token


def scatter():
    g = bag.embedding_bag_backward(dy, one_each)
    return g.rows, g.values


r2, s2 = scatter()
assert np.array_equal(r1, r2) and np.allclose(s1, s2, atol=1e-4)
t_add, t_seg = best_time(add_at), best_time(scatter)
print(f"embedding gradient, {len(ids):,} rows: np.add.at {1e3 * t_add:.1f} ms, "
      f"the bag backward {1e3 * t_seg:.1f} ms ({t_add / t_seg:.1f}x)")

# ---------------------------------------------------------------------------
# 3. CUDA kernels: each wrapper in minembed.cuda has a NumPy twin
# ---------------------------------------------------------------------------
src = cuda.kernel_source()
print(f"\n{cuda.KERNEL_FILE.name}: {len(src.splitlines())} lines, kernels "
      f"{', '.join(cuda.KERNEL_NAMES)}")
for name in cuda.KERNEL_NAMES:
    assert f"void {name}(" in src.replace("void  ", "void "), \
        f"kernel {name} missing from the source"
if not runtime.gpu_available():
    print("no GPU here (CuPy with a usable GPU was not found): the kernels are not run.")
    start = src.index("layernorm_forward")
    start = src.rfind("\n\n", 0, start) + 2
    print("this is one of them, LayerNorm's forward (one warp per row):\n")
    print("\n".join(src[start:].splitlines()[:30]))
else:
    # Measured on an NVIDIA H200 (CuPy 14.2, 2026-12-04; docs/gpu.md): every kernel within
    # 5.2e-6 relative of its twin. For the training steps the kernels matter less than the
    # number of operations Python launches: the InfoNCE rows in one kernel took 0.089 ms at
    # 4096 x 4096 where the same maths as a dozen CuPy array operations took 0.450 ms, and a
    # column sum dy.sum(axis=0) of (49152, 256) took 0.95 ms where ones @ dy took 0.04 ms.
    cp = backend.get_xp("gpu")
    x = rng.standard_normal((8192, 256)).astype(np.float32)
    g, b = np.ones(256, np.float32), np.zeros(256, np.float32)
    xd, gd, bd = cp.asarray(x), cp.asarray(g), cp.asarray(b)     # on the device once
    table_d, ids_d, offsets_d = cp.asarray(table), cp.asarray(ids), cp.asarray(offsets)
    checks = {
        "layernorm_forward": (lambda: cuda.layernorm_forward(xd, gd, bd)[0],
                              lambda: layers.layernorm_forward(x.copy(), g, b)[0]),
        "gelu_forward": (lambda: cuda.gelu_forward(xd)[0], lambda: layers.gelu_forward(x)[0]),
        "softmax_forward": (lambda: cuda.softmax_forward(xd)[0],
                            lambda: layers.softmax_forward(x)[0]),
        "embedding_bag_forward": (lambda: cuda.embedding_bag_forward(table_d, ids_d, offsets_d)[0],
                                  lambda: bag.embedding_bag_forward(table, ids, offsets)[0]),
    }
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"GPU: {name.decode() if isinstance(name, bytes) else name}")
    for name, (gpu, ref) in checks.items():
        err = float(np.abs(backend.to_numpy(gpu()) - ref()).max())
        gpu()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            gpu()
        cp.cuda.Device().synchronize()
        t_gpu = (time.perf_counter() - t0) / 10
        t_cpu = best_time(ref)
        print(f"   {name:22s} max |GPU - NumPy| {err:.1e}   GPU {1e3 * t_gpu:.3f} ms, NumPy "
              f"{1e3 * t_cpu:.2f} ms")
        assert err < 1e-4

print("\nlesson 9 OK")
