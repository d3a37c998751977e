"""Lesson 9: making it fast: where a step's time goes, the fast twins, the CUDA kernels.

What it teaches
    - where the time of a training step goes, for both encoders: the product's own loop
      (minembed/core/train.py's ``train_loop``) runs real steps, under the product's thread
      settings (``minembed.product.runtime.tuned``: BLAS on one thread for the bag model, on
      the idle cores for the transformer), with a stopwatch (``time.perf_counter``) on each
      part: sampling the pairs, the encoder's forward, the loss and its gradient, the
      encoder's backward, clipping + Adam. The parts add up to the step. Then cProfile's
      *cumulative* time of the transformer's layer functions;
    - the fast twins: ``minembed/core`` is the textbook, every function the plain maths.
      A few are marked ``@twin`` (minembed/core/backend.py): a faster version with the same
      signature and results (to float32 rounding) may stand in for them. ``minembed/fast/cpu.py``
      registers the NumPy twins (CSR sparse products, cache-blocked loops), ``fast/cuda.py`` the
      CUDA ones. Training runs the twins; ``with minembed.fast.reference_only():`` runs the
      references. We time references against twins, and a whole step with and without;
    - vectorisation: the bag forward as a Python loop over views, as the reference's array
      code (a scatter-add), as the twin's sparse product;
    - the CUDA kernels (minembed/fast/kernels.cu): one file, each kernel a twin of a reference.
      Where CuPy and a GPU are present each is run against its reference and timed; elsewhere
      the lesson says so and shows the source of one kernel.

What to look at
    - the bag model's step is a few tens of milliseconds, and most of it is Adam on the
      table rows the batch touched; its loss is a small part, until BLAS runs it on every
      core of a busy machine: the threads then wait for each other, and the same small
      products take many times longer. The thread settings are part of the speed;
    - the transformer's step is its forward and backward, and inside them the linear
      layers and attention;
    - the twins agree with their references to float32 rounding. The bag layer's reference,
      a scatter-add (np.add.at), is slower even than a Python loop over the views; its twin,
      a sparse product, is the fastest of the three. GELU's twin runs its chain of passes a
      block of rows at a time, in cache.
    Timings depend on the machine and on what else runs on it; the lesson prints its own.

Run:  python lessons/09_making_it_fast.py          (add --fast for the quick version)
"""
import contextlib
import cProfile
import inspect
import os
import pstats
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import minembed
from minembed import Corpus, TrainConfig
from minembed.core import backend, bag, layers, optim
from minembed.core.loss import contrastive_loss
from minembed.core.pairs import PairSampler
from minembed.core.train import loss_dims, train_loop, train_step
from minembed.fast import cpu, cuda, kernels, reference_only
from minembed.product import runtime
from minembed.product.model import encoder_module, initial_params

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"
STEPS = 3 if FAST else 12                # steps timed, after one to warm up
clock = time.perf_counter


def best_time(f, repeat=3):
    ts = []
    for _ in range(repeat):
        t0 = clock()
        f()
        ts.append(clock() - t0)
    return min(ts)


# ---------------------------------------------------------------------------
# 1. Where a step's time goes
#    train_loop takes its pieces as arguments: the sampler, the step function
#    (forward, loss, backward: train_step) and on_step, called after Adam. We
#    give it a sampler and a step function with a stopwatch on each line; what
#    passes between the step function's end and on_step is clipping + Adam.
#    The loop's own record["seconds"] is the whole step.
# ---------------------------------------------------------------------------
PARTS = ("sample the pairs", "encoder forward", "loss and d loss/d emb", "encoder backward",
         "clip + Adam")
spent = dict.fromkeys(PARTS, 0.0)        # seconds in each part, this step
marks = {}


@contextlib.contextmanager
def stopwatch(part):
    t0 = clock()
    yield
    spent[part] += clock() - t0


class TimedSampler(PairSampler):
    def sample(self, docs, rng):
        with stopwatch("sample the pairs"):
            return super().sample(docs, rng)


def timed_step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
    """train_step (minembed/core/train.py), line by line under the stopwatch."""
    with stopwatch("encoder forward"):
        emb, cache = encoder.forward(params, ids, offsets, enc_cfg, train=True, rng=rng)
    with stopwatch("loss and d loss/d emb"):
        loss, accuracy, demb = contrastive_loss(emb, cfg.scale, cfg.symmetric, loss_dims(cfg))
    with stopwatch("encoder backward"):
        grads = encoder.backward(demb, cache)
    marks["step_fn done"] = clock()
    return loss, accuracy, grads


source = Corpus()
tok = source.tokenizer(8192)
tc = source.tokenized(tok)
# the product's settings for each encoder (the bag model as one table of 256 columns; a
# vocabulary of 8,192 tokens, the lessons', where the product's default is 16,384)
SETTINGS = {"bag": TrainConfig(model="bag", members=1), "transformer": TrainConfig(
    model="transformer")}


def run_steps(model, steps, limits=None):
    """``steps`` + 1 real steps of train_loop; (ms per part, ms per whole step) over the last
    ``steps`` (the first warms up), the BLAS threads used. limits: threads to force instead of
    the product's."""
    cfg = SETTINGS[model].resolved()
    enc_cfg = cfg.encoder_config(tok.get_vocab_size())
    params = initial_params(enc_cfg, cfg.seed)
    adam = optim.adam_init(params)
    sampler = TimedSampler(tc, cfg)
    rows, whole = [], []

    def on_step(step, record):
        spent["clip + Adam"] += clock() - marks["step_fn done"]
        rows.append([spent[p] for p in PARTS])
        whole.append(record["seconds"])
        spent.update(dict.fromkeys(PARTS, 0.0))

    spent.update(dict.fromkeys(PARTS, 0.0))
    with (threadpool_limits(limits) if limits else runtime.tuned(model)) as threads:
        threads = limits or threads
        train_loop(encoder_module(model), params, adam, sampler, cfg, enc_cfg, steps + 1,
                   on_step=on_step, step_fn=timed_step)
    return 1e3 * np.array(rows[1:]).mean(0), 1e3 * np.mean(whole[1:]), threads, cfg


for model in ("bag", "transformer"):
    parts, step_ms, threads, cfg = run_steps(model, STEPS)
    print(f"\n{model} (dim {cfg.dim}, batch {cfg.batch_size} pairs), {STEPS} steps under "
          f"runtime.tuned: {threads} BLAS thread{'s' * (threads > 1)}, {step_ms:.1f} ms a step")
    for name, ms in zip(PARTS, parts):
        print(f"   {name:24s} {ms:8.2f} ms  {100 * ms / step_ms:5.1f} %")
    cover = parts.sum() / step_ms
    print(f"   {'the parts together':24s} {parts.sum():8.2f} ms  {100 * cover:5.1f} % of the step")
    assert cover >= 0.9, f"the parts should account for the step, not {cover:.1%}"
    assert parts[1] > 0 and parts[3] > 0
    if model == "bag" and (os.cpu_count() or 1) > 1:
        # what the bag step looks like with BLAS on every core (its default): its products are
        # (B, D) x (D, B), too small to split, and on a machine whose cores are busy the
        # threads wait for each other (the loss, here, is where the products are)
        n = os.cpu_count()
        crowd, crowd_ms, _, _ = run_steps(model, STEPS, limits=n)
        print(f"   the same steps with {n} BLAS threads (every core): {crowd_ms:.1f} ms a step, "
              f"the loss {crowd[2]:.2f} ms ({100 * crowd[2] / crowd_ms:.1f} %)")

# cProfile: which functions the transformer's step spends its time in, *cumulative* (a
# function's time includes the functions it calls: attention_forward holds its products).
# cProfile's own bookkeeping slows Python-heavy code, so these are shares, not timings.
cfg = SETTINGS["transformer"].resolved()
enc_cfg = cfg.encoder_config(tok.get_vocab_size())
params = initial_params(enc_cfg, cfg.seed)
sampler = PairSampler(tc, cfg)
tf = encoder_module("transformer")
prof = cProfile.Profile()
with runtime.tuned("transformer"):
    for step in range(1 if FAST else 3):
        rng = np.random.default_rng([cfg.seed, 2, step])
        ids, offsets = sampler.sample(sampler.usable[step * cfg.batch_size:][:cfg.batch_size], rng)
        prof.enable()
        train_step(tf, params, enc_cfg, ids, offsets, cfg, rng)
        prof.disable()
stats = pstats.Stats(prof).stats
total = max(v[3] for k, v in stats.items() if k[2] == "train_step")
package = os.path.dirname(os.path.abspath(minembed.__file__)) + os.sep
rows = sorted(((v[3], os.path.relpath(k[0], package), k[2]) for k, v in stats.items()
               if os.path.abspath(k[0]).startswith(package)
               and not k[2].startswith(("_", "<")) and k[2] not in ("call", "train_step")),
              reverse=True)
print("\ntransformer, train_step under cProfile: cumulative time of the package's functions, "
      "as % of the step\n(fast/cpu.py's are the twins, called by the marked functions of core/)")
for t, path, name in rows[:10]:
    print(f"   {100 * t / total:5.1f} %  {path}:{name}")

# ---------------------------------------------------------------------------
# 2. The fast twins
#    The marker, @twin (minembed/core/backend.py), wraps a reference in a
#    function that looks up a twin for the array module of its first argument
#    in backend.TWINS and runs it, or else the reference. f.reference is the
#    plain function. minembed/fast/__init__.py fills backend.TWINS when minembed
#    is imported: register("numpy", cpu.TWINS), register("cupy", cuda.TWINS).
# ---------------------------------------------------------------------------
print("\nthe marker, minembed/core/backend.py:\n")
print(inspect.getsource(backend.twin).rstrip())
print("\na function it marks, minembed/core/layers.py:\n")
print(inspect.getsource(layers.gelu_forward.reference).rstrip())
fast_gelu = backend.TWINS[("numpy", layers.gelu_forward.key)]
print(f"\nlayers.gelu_forward.key = {layers.gelu_forward.key!r}; on NumPy arrays it runs "
      f"{fast_gelu.__module__}.{fast_gelu.__name__}")
assert fast_gelu is cpu.gelu_forward and cpu.TWINS[layers.gelu_forward] is cpu.gelu_forward
print(f"twins for NumPy arrays ({len(cpu.TWINS)}): "
      + ", ".join(sorted(f.__name__ for f in cpu.TWINS)))

TOL = dict(rtol=2e-5, atol=2e-6)   # float32 rounding: the twins add in another order
rng = np.random.default_rng(0)
V, D, N = 8192, 256, (512 if FAST else 2048)
x = rng.standard_normal((4096 if FAST else 16384, 512)).astype(np.float32)
table = (0.02 * rng.standard_normal((V, D))).astype(np.float32)
lengths = rng.integers(5, 60, size=N)
offsets = np.r_[0, np.cumsum(lengths)]
ids = rng.integers(0, V, size=offsets[-1]).astype(np.int32)
dout = rng.standard_normal((N, D)).astype(np.float32)
_, cache = bag.embedding_bag_forward.reference(table, ids, offsets)
g = bag.embedding_bag_backward.reference(dout, cache)
state = [(0.01 * rng.standard_normal((V, D))).astype(np.float32) for _ in range(2)]
state[1] **= 2                                              # v >= 0


def adam(update):
    p, m, v = table.copy(), state[0].copy(), state[1].copy()
    update(p, g.rows, g.values, m, v, 7, 1e-3)
    return np.concatenate([p, m, v])


def bag_loop():  # the bag forward as a Python loop over views
    return np.stack([table[ids[offsets[i]:offsets[i + 1]]].mean(0) for i in range(N)])


pairs = {  # name: (reference, twin), each a function of no arguments giving an array
    "GELU forward": (lambda: layers.gelu_forward.reference(x)[0],
                     lambda: cpu.gelu_forward(x)[0]),
    "bag forward": (lambda: bag.embedding_bag_forward.reference(table, ids, offsets)[0],
                    lambda: cpu.embedding_bag_forward(table, ids, offsets)[0]),
    "bag backward": (lambda: bag.embedding_bag_backward.reference(dout, cache).values,
                     lambda: cpu.embedding_bag_backward(dout, cache).values),
    "Adam on rows": (lambda: adam(optim.adam_update_rows.reference),
                     lambda: adam(cpu.adam_update_rows)),
}
print(f"\nreference vs twin, the same inputs (GELU on {x.shape}; the bag: {N} views, "
      f"{len(ids):,} tokens, table {table.shape}; Adam: {len(g.rows):,} rows):")
print(f"   {'':14s} {'reference':>10s} {'twin':>10s}   speed-up   max |twin - reference|")
times = {}
with runtime.tuned("bag"):   # one BLAS thread for both
    for name, (ref, fast) in pairs.items():
        a, b = ref(), fast()
        np.testing.assert_allclose(b, a, **TOL)
        t_ref, t_fast = times[name] = best_time(ref), best_time(fast)
        print(f"   {name:14s} {1e3 * t_ref:7.2f} ms {1e3 * t_fast:7.2f} ms   "
              f"{t_ref / t_fast:6.1f}x   {np.abs(b - a).max():.1e}")
    # vectorisation: the same means as a Python loop over the views
    assert np.allclose(bag_loop(), pairs["bag forward"][1](), atol=1e-6)
    t_loop = best_time(bag_loop)
t_ref, t_fast = times["bag forward"]
print("GELU's twin: the reference's one expression as a chain of in-place passes, a block of "
      "rows at a time (fast/cpu.py)")
print(f"bag forward: a Python loop over the views {1e3 * t_loop:.1f} ms, the reference's "
      f"scatter-add (np.add.at) {1e3 * t_ref:.1f} ms, the twin's CSR product {1e3 * t_fast:.1f} ms")
assert t_fast < t_loop

# a whole step (forward, loss, backward) with the twins and with the references only
print("\ntrain_step with the twins (as training runs) and in minembed.fast.reference_only():")
for model in ("bag", "transformer"):
    cfg = SETTINGS[model].resolved()
    enc_cfg = cfg.encoder_config(tok.get_vocab_size())
    params = initial_params(enc_cfg, cfg.seed)
    enc = encoder_module(model)
    sampler = PairSampler(tc, cfg)
    ids, offsets = sampler.sample(sampler.usable[:cfg.batch_size], np.random.default_rng(1))

    def step():
        return train_step(enc, params, enc_cfg, ids, offsets, cfg, np.random.default_rng(2))

    with runtime.tuned(model):
        (loss, _, grads), t_twin = step(), best_time(step, 2)
        with reference_only():
            (loss_ref, _, grads_ref), t_ref = step(), best_time(step, 2)
    err = max(float(np.abs(getattr(grads[k], "values", grads[k])
                           - getattr(grads_ref[k], "values", grads_ref[k])).max()
                    / np.abs(getattr(grads_ref[k], "values", grads_ref[k])).max())
              for k in grads)
    print(f"   {model:11s} twins {1e3 * t_twin:7.1f} ms, references {1e3 * t_ref:7.1f} ms "
          f"({t_ref / t_twin:.1f}x); loss {loss:.6f} vs {loss_ref:.6f}, gradients agree to "
          f"{err:.1e}")
    assert abs(loss - loss_ref) < 1e-5 * abs(loss_ref) and err < 1e-4

# ---------------------------------------------------------------------------
# 3. CUDA kernels: minembed/fast/kernels.cu, launched by the wrappers in
#    minembed/fast/cuda.py, registered as the twins for CuPy arrays
# ---------------------------------------------------------------------------
src = kernels.kernel_source()
print(f"\n{kernels.KERNEL_FILE.name}: {len(src.splitlines())} lines, kernels "
      f"{', '.join(kernels.KERNEL_NAMES)}")
for name in kernels.KERNEL_NAMES:
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
    cp = runtime.get_xp("gpu")
    x = rng.standard_normal((8192, 256)).astype(np.float32)
    g, b = np.ones(256, np.float32), np.zeros(256, np.float32)
    xd, gd, bd = cp.asarray(x), cp.asarray(g), cp.asarray(b)     # on the device once
    table_d, ids_d, offsets_d = cp.asarray(table), cp.asarray(ids), cp.asarray(offsets)
    checks = {  # name: (the CUDA twin, the marked function, its arguments on the host)
        "layernorm_forward": (lambda: cuda.layernorm_forward(xd, gd, bd)[0],
                              layers.layernorm_forward, (x, g, b)),
        "gelu_forward": (lambda: cuda.gelu_forward(xd)[0], layers.gelu_forward, (x,)),
        "softmax_forward": (lambda: cuda.softmax_forward(xd)[0], layers.softmax_forward, (x,)),
        "embedding_bag_forward": (lambda: cuda.embedding_bag_forward(table_d, ids_d, offsets_d)[0],
                                  bag.embedding_bag_forward, (table, ids, offsets)),
    }
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"GPU: {name.decode() if isinstance(name, bytes) else name}; each kernel against the "
          "NumPy reference, and timed against NumPy as training runs it (the CPU twin, if any)")
    for name, (gpu, f, args) in checks.items():
        err = float(np.abs(backend.to_numpy(gpu()) - f.reference(*args)[0]).max())
        gpu()
        cp.cuda.Device().synchronize()
        t0 = clock()
        for _ in range(10):
            gpu()
        cp.cuda.Device().synchronize()
        t_gpu = (clock() - t0) / 10
        t_cpu = best_time(lambda: f(*args))
        print(f"   {name:22s} max |GPU - reference| {err:.1e}   GPU {1e3 * t_gpu:.3f} ms, NumPy "
              f"{1e3 * t_cpu:.2f} ms")
        assert err < 1e-4

print("\nlesson 9 OK")
