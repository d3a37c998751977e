"""One-shot GPU check of minembed: CUDA kernels, CuPy training steps, timings vs PyTorch CUDA.

    python3 benchmarks/gpu_check.py [--quick] [--json results.json]

Run on a machine with a CUDA GPU, CuPy and (for the timings) PyTorch; minembed
need not be installed (the repository root is put on sys.path). Each section
prints its error and lets the rest go on:

  1. device: GPU name, CuPy / CUDA / driver / PyTorch versions
  2. pytest tests/test_cuda.py (subprocess): NVRTC compile, kernels vs NumPy twins
  3. every kernel against its NumPy twin on fresh random inputs: max errors
  4. whole training steps (forward, InfoNCE, backward, clipping, Adam) on the GPU
     against the NumPy step from the same weights on the same batch: the bag
     model and two transformers, with the custom kernels and with the generic
     CuPy code (kernels off)
  5. timings, median of N synchronised steps after warm-up, each minembed step
     as the training loop takes it (train_step, clip_grads, adam_step):
       bag (B = 4096 pairs, views of 32-64 tokens, Zipf and uniform ids,
         V = 30000, D = 256, InfoNCE, lazy Adam) vs PyTorch nn.EmbeddingBag
         (mode='mean') + Adam (foreach and fused) and sparse + SparseAdam
       transformer (B = 256 pairs, T <= 128, d 256, 4 layers, 4 heads, FFN 1024,
         dropout 0) vs PyTorch eager nn.TransformerEncoder (pre-LN, tanh GELU,
         scaled_dot_product_attention inside) + Adam (fused)
     then where minembed's time goes: the step split into phases, and a profile.

Targets (issue "GPU, for real"): kernels within 1e-5 relative of their twins,
GPU steps equal to the CPU step within float32 tolerance, bag step <= 1.0x the
fastest PyTorch variant, transformer step <= 1.2x PyTorch eager.
"""
import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUMMARY = []        # rows of the final table: (check, result, vs PyTorch, verdict)
RESULTS = {}        # everything measured, for --json
PROBLEMS = []       # sections that raised


def section(title):
    print(f"\n## {title}\n", flush=True)


@contextlib.contextmanager
def guarded(name):
    """Print a failing section's error and go on with the next one."""
    t0 = time.perf_counter()
    try:
        yield
    except Exception:
        PROBLEMS.append(name)
        print(f"[{name}] FAILED:\n{traceback.format_exc()}", flush=True)
    finally:
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)


@contextlib.contextmanager
def kernels(enabled):
    from minembed.fast import kernels as k
    old = k.ENABLED
    k.ENABLED = enabled
    try:
        yield
    finally:
        k.ENABLED = old


# ---------------------------------------------------------------------------
# 1. device
# ---------------------------------------------------------------------------
def device_info():
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info = {"gpu": name, "sms": props["multiProcessorCount"],
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cc": f"{props['major']}.{props['minor']}", "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion(), "numpy": np.__version__,
            "python": sys.version.split()[0]}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        info["torch_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    except Exception as e:
        info["torch"] = f"not importable: {e}"
    info["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")
    RESULTS["device"] = info
    for k, v in info.items():
        print(f"{k}: {v}")


# ---------------------------------------------------------------------------
# 2. pytest
# ---------------------------------------------------------------------------
def run_pytest(quick):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_cuda.py"), "-q", "-rs",
           "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True,
                         timeout=240 if quick else 400)
    out = (res.stdout + res.stderr).strip().splitlines()
    print("\n".join(out[-40:]))
    RESULTS["pytest"] = out[-1] if out else "?"
    SUMMARY.append(("pytest tests/test_cuda.py", out[-1] if out else "?", "",
                    "pass" if res.returncode == 0 else f"FAIL (rc {res.returncode})"))


# ---------------------------------------------------------------------------
# 3. every kernel against its NumPy twin
# ---------------------------------------------------------------------------
def load_test_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("test_cuda", ROOT / "tests" / "test_cuda.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernel_errors():
    import cupy as cp
    tc = load_test_module()
    rng = np.random.default_rng(int(time.time()) % 100000)   # fresh inputs each run
    bad, worst = 0, 0.0
    rows = []
    print("| op | max abs err | max err / max abs | within tolerance |\n|---|---|---|---|")
    for name, case in tc.CASES.items():
        try:
            results = case(rng, cp)
        except Exception as e:
            bad += 1
            print(f"| {name} | ERROR {type(e).__name__}: {e} | | no |")
            continue
        for (label, err, rel), (_, got, want, exact) in zip(tc.max_errors(results), results):
            g = cp.asnumpy(got)
            ok = g.shape == np.asarray(want).shape and (
                np.array_equal(g, want) if exact else
                np.allclose(g, want, rtol=tc.RTOL, atol=tc.ATOL))
            bad += not ok
            worst = max(worst, rel)
            rows.append((label, err, rel, ok))
            print(f"| {label} | {err:.2e} | {rel:.2e} | {'yes' if ok else 'NO'} |")
    RESULTS["kernels"] = rows
    SUMMARY.append(("kernels vs NumPy twins", f"worst max err / max |x| {worst:.1e}",
                    "", ("pass" if bad == 0 else f"FAIL ({bad})") +
                    (", <= 1e-5 relative" if worst <= 1e-5 else ", > 1e-5 relative")))


# ---------------------------------------------------------------------------
# training steps
# ---------------------------------------------------------------------------
def loop_step(encoder, params, state, ids, offsets, enc_cfg, lr=1e-3, clip=0.0, seed=0):
    """One step as minembed.core.train's loop takes it: train_step, clip_grads, adam_step."""
    from minembed.core import optim
    from minembed.core.train import train_step
    cfg = types.SimpleNamespace(scale=20.0, symmetric=False)
    loss, _, grads = train_step(encoder, params, enc_cfg, ids, offsets, cfg,
                                np.random.default_rng(seed))
    optim.clip_grads(grads, clip)
    optim.adam_step(params, grads, state, lr, lazy=True)
    return loss


def zipf_ids(rng, n, vocab, a=1.1):
    """Token ids with a Zipf-like head (real text: a few ids are very frequent)."""
    p = 1.0 / np.arange(1, vocab + 1) ** a
    return rng.choice(vocab, size=n, p=p / p.sum()).astype(np.int32)


def bag_batch(rng, pairs, vocab, lo=32, hi=64, ids="zipf"):
    lengths = rng.integers(lo, hi + 1, 2 * pairs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    tok = zipf_ids(rng, n, vocab) if ids == "zipf" else rng.integers(0, vocab, n).astype(np.int32)
    return tok, offsets


def to_dev(tree):
    import cupy as cp
    return {k: cp.array(v, copy=True) for k, v in tree.items()}   # never an alias of the host array


def dev_batch(ids, offsets):
    import cupy as cp
    return cp.asarray(ids), cp.asarray(offsets)


def _grad_arrays(grads):
    """{name: host copy} of a gradient dict (a RowGrad as its rows and values)."""
    from minembed.core.backend import to_numpy
    out = {}
    for k, g in grads.items():
        if hasattr(g, "rows"):
            out[k + ".rows"] = np.array(to_numpy(g.rows))
            out[k] = np.array(to_numpy(g.values))
        else:
            out[k] = np.array(to_numpy(g))
    return out


def _worst(ref, got):
    """(worst max|diff| / max|ref| over the arrays, its name)."""
    worst, name = 0.0, ""
    for k, r in ref.items():
        r = np.asarray(r, np.float64)
        g = np.asarray(got[k], np.float64)
        if r.shape != g.shape:
            return float("inf"), k + " (shape)"
        rel = float(np.abs(g - r).max()) / max(float(np.abs(r).max()), 1e-30) if r.size else 0.0
        if rel >= worst:
            worst, name = rel, k
    return worst, name


def compare_step(label, encoder, enc_cfg, params_np, ids, offsets, lr=1e-2, clip=0.0):
    """One training step, NumPy and GPU (kernels on, and the generic CuPy code),
    from the same weights on the same batch: the loss, every gradient, and the
    weights after clipping + Adam applied to the same gradient (the NumPy one,
    copied to the GPU). Adam's update is ~lr * sign(g) where |g| is tiny, so
    weights after Adam on each side's own gradient differ by up to ~lr where a
    gradient entry is float32 noise: reported too, for information."""
    import cupy as cp
    from minembed.core import optim
    from minembed.core.train import train_step
    cfg = types.SimpleNamespace(scale=20.0, symmetric=False)
    p_np = {k: v.copy() for k, v in params_np.items()}
    loss_np, acc_np, g_np = train_step(encoder, p_np, enc_cfg, ids, offsets, cfg,
                                       np.random.default_rng(0))
    ref_grads = _grad_arrays(g_np)
    p_own = {k: v.copy() for k, v in params_np.items()}
    own = loop_step(encoder, p_own, optim.adam_init(p_own), ids, offsets, enc_cfg, lr, clip)
    assert own == loss_np
    optim.clip_grads(g_np, clip)
    optim.adam_step(p_np, g_np, optim.adam_init(p_np), lr, lazy=True)
    for on in (True, False):
        how = "kernels" if on else "generic CuPy"
        ids_d, off_d = dev_batch(ids, offsets)
        with kernels(on):
            p_gpu = to_dev(params_np)
            loss, acc, g_gpu = train_step(encoder, p_gpu, enc_cfg, ids_d, off_d, cfg,
                                          np.random.default_rng(0))
            g_err, g_name = _worst(ref_grads, _grad_arrays(g_gpu))
            same = {}                                        # the NumPy gradient, on the GPU
            for k, g in train_step(encoder, {k: v.copy() for k, v in params_np.items()}, enc_cfg,
                                   ids, offsets, cfg, np.random.default_rng(0))[2].items():
                same[k] = (type(g)(cp.asarray(g.rows), cp.asarray(g.values)) if hasattr(g, "rows")
                           else cp.asarray(g))
            optim.clip_grads(same, clip)
            optim.adam_step(p_gpu, same, optim.adam_init(p_gpu), lr, lazy=True)
            w_err, w_name = _worst(p_np, {k: cp.asnumpy(v) for k, v in p_gpu.items()})
            p_gpu = to_dev(params_np)
            loop_step(encoder, p_gpu, optim.adam_init(p_gpu), ids_d, off_d, enc_cfg, lr, clip)
            o_err, o_name = _worst(p_own, {k: cp.asnumpy(v) for k, v in p_gpu.items()})
        dl = abs(loss - loss_np) / max(abs(loss_np), 1e-12)
        print(f"{label} [{how}]: loss NumPy {loss_np:.7f} GPU {loss:.7f} (rel {dl:.1e}); "
              f"accuracy {acc_np:.4f} / {acc:.4f}")
        print(f"{label} [{how}]: gradients: worst max|diff|/max|g| = {g_err:.1e} ({g_name}); "
              f"weights after clip + Adam on the same gradient: {w_err:.1e} ({w_name}); "
              f"after Adam on each side's own gradient: {o_err:.1e} ({o_name})")
        ok = dl < 1e-5 and g_err < 1e-4 and w_err < 1e-5
        RESULTS[f"step {label} {how}"] = {"loss_rel": dl, "grad_rel": g_err, "weights_rel": w_err,
                                          "weights_own_grad_rel": o_err}
        SUMMARY.append((f"{label} step GPU ({how}) vs NumPy",
                        f"loss {dl:.1e}, grads {g_err:.1e}, weights {w_err:.1e}", "",
                        "pass" if ok else "FAIL"))


def compare_bag(quick):
    from minembed.core import bag
    rng = np.random.default_rng(1)
    V, D = 30000, 256
    pairs = 256 if quick else 1024
    cfg = {"vocab_size": V, "dim": D}
    params = bag.init_params(cfg, rng)
    ids, offsets = bag_batch(rng, pairs, V)
    compare_step(f"bag (B={pairs} pairs)", bag, cfg, params, ids, offsets, lr=0.1)
    # --pooling sublinear: the CuPy sparse path (no kernel), as minembed encode runs it
    import cupy as cp
    want = bag.sublinear_bag_forward(params["tok_emb"], ids, offsets)[0]
    got = cp.asnumpy(bag.sublinear_bag_forward(*map(cp.asarray,
                                                    (params["tok_emb"], ids, offsets)))[0])
    err = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"bag encoding with --pooling sublinear: GPU vs NumPy max|diff|/max|x| = {err:.1e}")
    SUMMARY.append(("bag --pooling sublinear GPU vs NumPy", f"{err:.1e}", "",
                    "pass" if err < 1e-5 else "FAIL"))


def compare_transformer(quick):
    from minembed.core import transformer
    rng = np.random.default_rng(2)
    cfg = {"vocab_size": 2000, "dim": 64, "layers": 2, "heads": 4, "ffn": 256,
           "max_len": 32, "dropout": 0.0}
    params = transformer.init_params(cfg, rng)
    ids, offsets = bag_batch(rng, 8, cfg["vocab_size"], 5, 40)   # some views cut at max_len
    compare_step("transformer (small, 4 buckets)", transformer, cfg, params, ids, offsets,
                 clip=1.0)
    cfg = {"vocab_size": 8192, "dim": 256, "layers": 4, "heads": 4, "ffn": 1024,
           "max_len": 128, "dropout": 0.0}
    params = transformer.init_params(cfg, rng)
    ids, offsets = bag_batch(rng, 16 if quick else 64, cfg["vocab_size"], 10, 150)
    compare_step("transformer (default size)", transformer, cfg, params, ids, offsets, lr=5e-4,
                 clip=1.0)


# ---------------------------------------------------------------------------
# 5. timings
# ---------------------------------------------------------------------------
def timeit(fn, sync, warmup, n):
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cp_sync():
    import cupy as cp
    cp.cuda.Device().synchronize()


def minembed_runner(encoder, enc_cfg, params_np, ids, offsets, kernels_on=True, clip=0.0):
    from minembed.core import optim
    params = to_dev(params_np)
    state = optim.adam_init(params)
    ids_d, off_d = dev_batch(ids, offsets)

    def step():
        with kernels(kernels_on):
            return loop_step(encoder, params, state, ids_d, off_d, enc_cfg, 1e-3, clip)
    return step


def phases(encoder, enc_cfg, params_np, ids, offsets, n, clip=0.0):
    """Median ms of each phase of minembed's step (synchronised after each)."""
    from minembed.core import optim
    from minembed.core.loss import infonce_backward, infonce_forward
    params = to_dev(params_np)
    state = optim.adam_init(params)
    ids_d, off_d = dev_batch(ids, offsets)
    out = {k: [] for k in ("forward", "loss fwd+bwd", "backward", "grad norm", "adam", "step")}
    import cupy as cp
    for i in range(n + 2):
        t = [time.perf_counter()]

        def mark():
            cp_sync()
            t.append(time.perf_counter())
        emb, cache = encoder.forward(params, ids_d, off_d, enc_cfg, train=True,
                                     rng=np.random.default_rng(0))
        mark()
        b = emb.shape[0] // 2
        loss, _, lc = infonce_forward(emb[:b], emb[b:], scale=20.0)
        da, dp = infonce_backward(1.0, lc)
        mark()
        grads = encoder.backward(cp.concatenate([da, dp]), cache)
        mark()
        optim.clip_grads(grads, clip)
        mark()
        optim.adam_step(params, grads, state, 1e-3, lazy=True)
        mark()
        if i >= 2:
            for k, a, b_ in zip(out, t[:-1], t[1:]):
                out[k].append(b_ - a)
            out["step"].append(t[-1] - t[0])
    return {k: 1e3 * float(np.median(v)) for k, v in out.items()}


def profile(step, n=5, top=25):
    """Host-side profile of n steps: where Python spends the step (a sync shows
    up as time in the call that waits: get, item, float, synchronize)."""
    step()
    cp_sync()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        step()
    cp_sync()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    print("\n".join(s.getvalue().splitlines()[:top + 12]))


BREAKDOWN = {
    "layers": ["linear_forward", "linear_backward", "layernorm_forward", "layernorm_backward",
               "gelu_forward", "gelu_backward", "softmax_forward", "softmax_backward",
               "dropout_forward", "dropout_backward", "pad_forward", "pad_backward",
               "unpad_forward", "unpad_backward", "attention_core_forward",
               "attention_core_backward", "attention_forward", "attention_backward",
               "segment_sum", "embedding_forward", "embedding_backward", "positional_forward",
               "positional_backward", "mean_pool_forward", "mean_pool_backward"],
    "loss": ["l2_normalize_forward", "l2_normalize_backward", "infonce_rows"],
    "train": ["infonce_forward", "infonce_backward"],
    "optim": ["adam_update", "adam_update_rows", "grad_norm", "adam_step"],
    "bag": ["embedding_bag_forward", "embedding_bag_backward"],
    "transformer": ["layout"],
}


def gpu_breakdown(step, n=5, top=30):
    """Where the GPU time of a step goes: CUDA events recorded around every call
    of the layer functions (no host waits), read after the steps; 'self' is a
    function's time minus that of the listed functions it called. Where the host
    is slower than the GPU, the gaps count too (then the times are host time)."""
    import importlib
    import cupy as cp
    recs, stack, patched = [], [], []

    def wrap(modname, fname, fn):
        def timed(*a, **k):
            e0 = cp.cuda.Event()
            e0.record()
            me = len(recs)
            recs.append([fname, e0, None, stack[-1] if stack else None])
            stack.append(me)
            try:
                return fn(*a, **k)
            finally:
                stack.pop()
                e1 = cp.cuda.Event()
                e1.record()
                recs[me][2] = e1
        return timed

    for modname, names in BREAKDOWN.items():
        mod = importlib.import_module(f"minembed.{modname}")
        for fname in names:
            fn = getattr(mod, fname, None)
            if fn is not None:
                patched.append((mod, fname, fn))
                setattr(mod, fname, wrap(modname, fname, fn))
    try:
        step()
        cp_sync()
        recs.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        cp_sync()
        wall = (time.perf_counter() - t0) / n
    finally:
        for mod, fname, fn in patched:
            setattr(mod, fname, fn)
    total = [cp.cuda.get_elapsed_time(r[1], r[2]) for r in recs]
    child = [0.0] * len(recs)
    for i, r in enumerate(recs):
        if r[3] is not None:
            child[r[3]] += total[i]
    agg = {}
    for i, r in enumerate(recs):
        a = agg.setdefault(r[0], [0, 0.0, 0.0])
        a[0] += 1
        a[1] += total[i]
        a[2] += total[i] - child[i]
    print(f"wall {wall * 1e3:.2f} ms per step (with the events); per step, ms:")
    print(f"  {'function':28s} {'calls':>6s} {'total':>8s} {'self':>8s}")
    for name, (calls, tot, self_) in sorted(agg.items(), key=lambda kv: -kv[1][2])[:top]:
        print(f"  {name:28s} {calls / n:6.0f} {tot / n:8.3f} {self_ / n:8.3f}")
    return {k: v[2] / n for k, v in agg.items()}


def micro():
    """GPU and host time of single operations that decide the step times."""
    import cupy as cp
    from cupyx.profiler import benchmark
    from minembed.core import loss
    rng = np.random.default_rng(0)
    rows = []

    def bench(label, fn, *args):
        r = benchmark(fn, args, n_repeat=20, n_warmup=3)
        g, c = 1e3 * float(np.median(r.gpu_times[0])), 1e3 * float(np.median(r.cpu_times))
        rows.append((label, g, c))
        print(f"  {label:58s} GPU {g:8.3f} ms   host {c:8.3f} ms", flush=True)

    for M, C in ((49152, 256), (49152, 1024)):
        dy = cp.asarray(rng.standard_normal((M, C), dtype=np.float32))
        ones = cp.ones((1, M), np.float32)
        bench(f"db = dy.sum(axis=0), dy ({M}, {C})", lambda d: d.sum(axis=0), dy)
        bench(f"db = ones(1, M) @ dy, dy ({M}, {C})", lambda d: (ones @ d)[0], dy)
    x = cp.asarray(rng.standard_normal((49152, 256), dtype=np.float32))
    w = cp.asarray(rng.standard_normal((256, 1024), dtype=np.float32))
    bench("GEMM (49152, 256) @ (256, 1024)  [25.8 GFLOP]", lambda a, b: a @ b, x, w)
    a = cp.asarray(rng.standard_normal((4096, 256), dtype=np.float32))
    bench("GEMM (4096, 256) @ (256, 4096)  [8.6 GFLOP]", lambda u, v: u @ v.T, a, a)
    s = (a @ a.T) / 16
    bench("infonce_rows kernel, 4096 x 4096", loss.infonce_rows, s)
    with kernels(False):
        bench("infonce_rows generic CuPy, 4096 x 4096", loss.infonce_rows, s)
    keys = cp.asarray(zipf_ids(rng, 393216, 30000))
    bench("argsort of 393k int32 ids", cp.argsort, keys)
    RESULTS["micro"] = rows


def torch_infonce(F, torch, a, p, scale=20.0):
    a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    s = scale * a @ p.T
    return F.cross_entropy(s, torch.arange(s.shape[0], device=s.device))


def torch_bag_runner(V, D, ids, offsets, variant):
    import torch
    import torch.nn.functional as F
    dev = torch.device("cuda")
    sparse = variant == "sparse"
    model = torch.nn.EmbeddingBag(V, D, mode="mean", include_last_offset=True,
                                  sparse=sparse).to(dev)
    if variant == "sparse":
        opt = torch.optim.SparseAdam(model.parameters(), lr=1e-3)
    elif variant == "fused":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)     # foreach on CUDA
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev)
    off_t = torch.as_tensor(offsets, dtype=torch.long, device=dev)
    b = (len(offsets) - 1) // 2

    def step():
        opt.zero_grad(set_to_none=True)
        emb = model(ids_t, off_t)
        loss = torch_infonce(F, torch, emb[:b], emb[b:])
        loss.backward()
        opt.step()
        return loss.item()      # the loop logs the loss, as minembed's does
    return step


def torch_transformer_runner(V, cfg, ids, offsets):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    dev = torch.device("cuda")
    D, T_max = cfg["dim"], cfg["max_len"]
    lens = np.minimum(np.diff(offsets), T_max)
    N, T = len(lens), int(lens.max())
    grid = np.zeros((N, T), np.int64)
    for i, (o, n) in enumerate(zip(offsets[:-1], lens)):
        grid[i, :n] = ids[o:o + n]
    key_mask = np.arange(T)[None, :] < lens[:, None]
    ids_t = torch.as_tensor(grid, device=dev)
    pad_t = torch.as_tensor(~key_mask, device=dev)                # True = padding
    keep_t = torch.as_tensor(key_mask, device=dev, dtype=torch.float32)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(V, D)
            self.pos = nn.Embedding(T_max, D)
            layer = nn.TransformerEncoderLayer(
                D, cfg["heads"], cfg["ffn"], dropout=cfg["dropout"], batch_first=True,
                norm_first=True, activation=lambda x: F.gelu(x, approximate="tanh"))
            self.enc = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
            self.ln_f = nn.LayerNorm(D)

        def forward(self, ids, pad):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            x = self.ln_f(self.enc(x, src_key_padding_mask=pad))
            return (x * keep_t[..., None]).sum(1) / keep_t.sum(1, keepdim=True).clamp(min=1)

    model = Enc().to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    b = N // 2

    def step():
        opt.zero_grad(set_to_none=True)
        emb = model(ids_t, pad_t)
        loss = torch_infonce(F, torch, emb[:b], emb[b:])
        loss.backward()
        opt.step()
        return loss.item()
    return step


def run_timed(workload, runners, warm, n, ref_labels, target):
    import torch
    t = {}
    for label, make in runners:
        with guarded(f"{workload}: {label}"):
            fn = make()
            sync = cp_sync if label.startswith("minembed") else torch.cuda.synchronize
            t[label] = timeit(fn, sync, warm, n)
            print(f"{workload}: {label}: {t[label] * 1e3:.2f} ms/step", flush=True)
            del fn
    refs = {k: t[k] for k in ref_labels if k in t}
    best = min(refs, key=refs.get) if refs else None
    RESULTS[workload] = {k: v * 1e3 for k, v in t.items()}
    for label, sec in t.items():
        ratio = f"{sec / refs[best]:.2f}x {best}" if best else ""
        verdict = ""
        if label == "minembed (kernels)":
            verdict = ("n/a (no reference)" if best is None else
                       ("target met" if sec <= target * refs[best] else "target MISSED")
                       + f" (<= {target}x)")
        SUMMARY.append((f"{workload}: {label}", f"{sec * 1e3:.2f} ms", ratio, verdict))


def timings(quick):
    from minembed.core import bag, transformer
    warm, n = (2, 5) if quick else (5, 20)
    rng = np.random.default_rng(3)
    V, D, pairs = 30000, 256, 4096
    cfg = {"vocab_size": V, "dim": D}
    params = bag.init_params(cfg, rng)
    for dist in ("zipf", "uniform"):
        ids, offsets = bag_batch(rng, pairs, V, ids=dist)
        workload = f"bag step B={pairs} ({dist} ids)"
        run_timed(workload, [
            ("minembed (kernels)", lambda: minembed_runner(bag, cfg, params, ids, offsets)),
            ("minembed (generic CuPy)",
             lambda: minembed_runner(bag, cfg, params, ids, offsets, kernels_on=False)),
            ("torch EmbeddingBag + Adam", lambda: torch_bag_runner(V, D, ids, offsets, "foreach")),
            ("torch EmbeddingBag + Adam(fused)",
             lambda: torch_bag_runner(V, D, ids, offsets, "fused")),
            ("torch EmbeddingBag(sparse) + SparseAdam",
             lambda: torch_bag_runner(V, D, ids, offsets, "sparse"))],
            warm, n, ["torch EmbeddingBag + Adam", "torch EmbeddingBag + Adam(fused)",
                      "torch EmbeddingBag(sparse) + SparseAdam"], 1.0)
        with guarded(f"{workload}: phases"):
            ph = phases(bag, cfg, params, ids, offsets, n)
            RESULTS[workload + " phases"] = ph
            print(f"{workload}: minembed phases (ms, synchronised after each): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
        if dist == "zipf":
            with guarded(f"{workload}: GPU breakdown"):
                RESULTS[workload + " breakdown"] = gpu_breakdown(
                    minembed_runner(bag, cfg, params, ids, offsets), n)

    tcfg = {"vocab_size": V, "dim": 256, "layers": 4, "heads": 4, "ffn": 1024,
            "max_len": 128, "dropout": 0.0}
    tparams = transformer.init_params(tcfg, rng)
    ids, offsets = bag_batch(rng, 256, V, 64, 128)
    workload = "transformer step B=256 (T 64-128, d256 L4 H4 F1024, dropout 0)"
    run_timed(workload, [
        ("minembed (kernels)", lambda: minembed_runner(transformer, tcfg, tparams, ids, offsets,
                                                       clip=1.0)),
        ("minembed (generic CuPy)", lambda: minembed_runner(transformer, tcfg, tparams, ids,
                                                            offsets, kernels_on=False, clip=1.0)),
        ("torch eager TransformerEncoder + Adam(fused)",
         lambda: torch_transformer_runner(V, tcfg, ids, offsets))],
        warm, n, ["torch eager TransformerEncoder + Adam(fused)"], 1.2)
    with guarded(f"{workload}: phases"):
        ph = phases(transformer, tcfg, tparams, ids, offsets, n, clip=1.0)
        RESULTS[workload + " phases"] = ph
        print(f"{workload}: minembed phases (ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    with guarded(f"{workload}: GPU breakdown"):
        RESULTS[workload + " breakdown"] = gpu_breakdown(
            minembed_runner(transformer, tcfg, tparams, ids, offsets, clip=1.0), n)
    with guarded(f"{workload}: profile"):
        profile(minembed_runner(transformer, tcfg, tparams, ids, offsets, clip=1.0))
    with guarded("micro-benchmarks"):
        print("single operations (cupyx.profiler.benchmark, median of 20):")
        micro()
    dcfg = dict(tcfg, dropout=0.1)
    workload = "transformer step B=256, dropout 0.1"
    run_timed(workload, [
        ("minembed (kernels)", lambda: minembed_runner(transformer, dcfg, tparams, ids, offsets,
                                                       clip=1.0)),
        ("torch eager TransformerEncoder + Adam(fused)",
         lambda: torch_transformer_runner(V, dcfg, ids, offsets))],
        warm, n, ["torch eager TransformerEncoder + Adam(fused)"], 1.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps, smaller compares")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--skip-timings", action="store_true")
    ap.add_argument("--json", help="write every figure to this JSON file")
    args = ap.parse_args()
    t0 = time.perf_counter()

    section("1. device")
    try:
        device_info()
    except Exception as e:
        print(f"No usable GPU through CuPy ({type(e).__name__}: {e}); nothing to check here.")
        return 2
    if not args.skip_pytest:
        section("2. pytest tests/test_cuda.py")
        with guarded("pytest"):
            run_pytest(args.quick)
    section("3. kernels vs NumPy twins (fresh random inputs)")
    with guarded("kernel errors"):
        kernel_errors()
    section("4. whole training steps: GPU vs NumPy")
    with guarded("bag step vs NumPy"):
        compare_bag(args.quick)
    with guarded("transformer step vs NumPy"):
        compare_transformer(args.quick)
    if not args.skip_timings:
        section("5. timings (median ms per training step, synchronised)")
        timings(args.quick)

    section("summary")
    print("| check | result | vs PyTorch | verdict |\n|---|---|---|---|")
    for row in SUMMARY:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if PROBLEMS:
        print(f"\nsections that raised: {', '.join(PROBLEMS)}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        RESULTS["summary"] = SUMMARY
        RESULTS["problems"] = PROBLEMS
        Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
