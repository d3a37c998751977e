"""One-shot GPU check of minembed's custom CUDA kernels (a few minutes).

    python3 benchmarks/gpu_check.py            # full run
    python3 benchmarks/gpu_check.py --quick    # fewer timed steps, smaller compares

Run from anywhere on a machine with a CUDA GPU, CuPy and (for the timings)
PyTorch; minembed need not be installed (the repository root is put on
sys.path). Sections, each of which prints its error and lets the rest go on:

  1. device: GPU name, CuPy / PyTorch / driver versions
  2. pytest tests/test_cuda.py (subprocess): nvcc compile, kernels vs NumPy twins
  3. kernel vs NumPy twin: the max error of every op on fresh random inputs
  4. full training steps on the GPU (kernels) vs the NumPy step on the same
     inputs: loss and the updated weights (bag, and a small transformer)
  5. timings, median of N steps after warm-up, synchronised:
       bag (B = 4096 pairs, views of 32-64 tokens, V = 30000, D = 256, InfoNCE, lazy Adam)
         vs PyTorch nn.EmbeddingBag(mode='mean') + Adam (and + SparseAdam)
       transformer (B = 256 pairs, T <= 128, d 256, 4 layers, 4 heads, FFN 1024)
         vs PyTorch eager nn.TransformerEncoder(norm_first, GELU tanh) + Adam
     each minembed step both with the custom kernels and with the generic
     CuPy code (MINEMBED kernels off), and a Markdown table with the targets:
       bag step <= PyTorch's; transformer step <= 1.5 x PyTorch's.

The kernels are reached the way the package will reach them once the layer
functions dispatch to ``minembed.cuda`` (see WIRING): where a function is not
wired yet, this script installs that dispatch for its own run only.
"""
import argparse
import contextlib
import inspect
import os
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCH_DEVICE = "cuda"   # the PyTorch reference's device ("cpu" only to try the script out)
SUMMARY = []        # rows of the final table
PROBLEMS = []       # sections that failed


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


# ---------------------------------------------------------------------------
# the dispatch from the NumPy layer functions to minembed.cuda
# ---------------------------------------------------------------------------
# (module, function, condition on the call's arguments, wrapper name). The
# owners of those modules add, at the top of each function,
#     if <condition>: return cuda.<wrapper>(<same arguments>)
WIRING = [
    ("bag", "embedding_bag_forward", "cuda.use_kernels(table)", "embedding_bag_forward"),
    ("bag", "embedding_bag_backward", "isinstance(cache, cuda.BagCache)", "embedding_bag_backward"),
    ("layers", "segment_sum", "cuda.use_kernels(values)", "segment_sum"),
    ("layers", "layernorm_forward", "cuda.use_kernels(x, g, b)", "layernorm_forward"),
    ("layers", "layernorm_backward", "cuda.use_kernels(dy)", "layernorm_backward"),
    ("layers", "gelu_forward", "cuda.use_kernels(x)", "gelu_forward"),
    ("layers", "gelu_backward", "cuda.use_kernels(dy)", "gelu_backward"),
    ("layers", "softmax_forward", "cuda.use_kernels(z)", "softmax_forward"),
    ("layers", "softmax_backward", "cuda.use_kernels(dp, cache[0])", "softmax_backward"),
    ("optim", "adam_update", "cuda.use_kernels(p, g, m, v)", "adam_update"),
    ("optim", "adam_update_rows", "cuda.use_kernels(p, g_rows, m, v)", "adam_update_rows"),
]


def install_dispatch():
    """Patch the not-yet-wired layer functions to call minembed.cuda (this process only)."""
    import importlib
    from minembed import cuda
    patched, wired = [], []
    for mod_name, fn_name, cond, wrapper_name in WIRING:
        mod = importlib.import_module(f"minembed.{mod_name}")
        orig = getattr(mod, fn_name)
        if getattr(orig, "_gpu_check_patch", False):
            continue
        if "cuda." in inspect.getsource(orig):
            wired.append(f"{mod_name}.{fn_name}")
            continue
        sig = inspect.signature(orig)
        wrapper = getattr(cuda, wrapper_name)
        check = compile(cond, f"<dispatch {fn_name}>", "eval")

        def dispatch(*args, _orig=orig, _sig=sig, _wrapper=wrapper, _check=check, **kwargs):
            bound = _sig.bind(*args, **kwargs)
            bound.apply_defaults()
            if eval(_check, {"cuda": cuda}, dict(bound.arguments)):
                return _wrapper(*bound.args, **bound.kwargs)
            return _orig(*args, **kwargs)

        dispatch._gpu_check_patch = True
        dispatch.__wrapped__ = orig
        setattr(mod, fn_name, dispatch)
        patched.append(f"{mod_name}.{fn_name}")
    print(f"dispatch already wired in the package: {wired or 'none'}")
    print(f"dispatch installed by this script: {patched or 'none'}")


@contextlib.contextmanager
def kernels(enabled):
    from minembed import cuda
    old = cuda.ENABLED
    cuda.ENABLED = enabled
    try:
        yield
    finally:
        cuda.ENABLED = old


# ---------------------------------------------------------------------------
# 1. device
# ---------------------------------------------------------------------------
def device_info():
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"GPU: {name}, {props['multiProcessorCount']} SMs, "
          f"{props['totalGlobalMem'] / 2**30:.1f} GiB, cc {props['major']}.{props['minor']}")
    print(f"CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, "
          f"driver {cp.cuda.runtime.driverGetVersion()}, NumPy {np.__version__}, "
          f"Python {sys.version.split()[0]}")
    try:
        import torch
        print(f"PyTorch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    except Exception as e:
        print(f"PyTorch not importable: {e}")
    return name


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
    bad = 0
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
            print(f"| {label} | {err:.2e} | {rel:.2e} | {'yes' if ok else 'NO'} |")
    SUMMARY.append(("kernels vs NumPy twins", "", "", "pass" if bad == 0 else f"FAIL ({bad})"))


# ---------------------------------------------------------------------------
# training steps
# ---------------------------------------------------------------------------
def step_fn():
    """(params, state, ids, offsets, encoder, enc_cfg, rng) -> loss: one full step,
    as minembed.train does it (forward, InfoNCE, backward, Adam)."""
    from minembed import optim
    from minembed.backend import xp_of
    from minembed.loss import infonce_backward, infonce_forward
    lcfg = types.SimpleNamespace(scale=20.0, symmetric=False)
    try:
        from minembed.train import train_step
    except Exception:
        def train_step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
            emb, cache = encoder.forward(params, ids, offsets, enc_cfg, train=True, rng=rng)
            b = emb.shape[0] // 2
            loss, lc = infonce_forward(emb[:b], emb[b:], scale=cfg.scale, symmetric=cfg.symmetric)
            da, dp = infonce_backward(lc)
            grads = encoder.backward(xp_of(emb).concatenate([da, dp]), cache)
            return loss, lc["accuracy"], grads

    def step(encoder, params, state, ids, offsets, enc_cfg, lr=1e-3, lazy=True):
        loss, _, grads = train_step(encoder, params, enc_cfg, ids, offsets, lcfg,
                                    np.random.default_rng(0))
        optim.adam_step(params, grads, state, lr, lazy=lazy)
        return loss
    return step


def zipf_ids(rng, n, vocab, a=1.1):
    """Token ids with a Zipf-like head (real text: a few ids are very frequent)."""
    p = 1.0 / np.arange(1, vocab + 1) ** a
    return rng.choice(vocab, size=n, p=p / p.sum()).astype(np.int32)


def bag_batch(rng, pairs, vocab, lo=32, hi=64):
    lengths = rng.integers(lo, hi + 1, 2 * pairs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return zipf_ids(rng, int(offsets[-1]), vocab), offsets


def to_dev(tree):
    import cupy as cp
    return {k: cp.asarray(v) for k, v in tree.items()}


def dev_batch(encoder, ids, offsets):
    """The batch as the step gets it: on the device for the bag; the transformer's
    layout() is host NumPy by design, so its ids stay on the host."""
    import cupy as cp
    if encoder.__name__.endswith("transformer"):
        return ids, offsets
    return cp.asarray(ids), cp.asarray(offsets)


def compare_step(label, encoder, enc_cfg, params_np, ids, offsets, n_steps=2, lr=1e-2):
    """Run n_steps of the NumPy step and the GPU (kernels) step from the same
    weights on the same batch; compare the losses and the final weights."""
    import cupy as cp
    from minembed import optim
    step = step_fn()
    p_np = {k: v.copy() for k, v in params_np.items()}
    p_gpu = to_dev(params_np)
    s_np, s_gpu = optim.adam_init(p_np), optim.adam_init(p_gpu)
    ids_d, off_d = dev_batch(encoder, ids, offsets)
    losses = []
    with kernels(True):
        for _ in range(n_steps):
            l_np = step(encoder, p_np, s_np, ids, offsets, enc_cfg, lr)
            l_gpu = step(encoder, p_gpu, s_gpu, ids_d, off_d, enc_cfg, lr)
            losses.append((l_np, l_gpu))
    worst, worst_name = 0.0, ""
    for k in p_np:
        ref = p_np[k]
        err = float(np.abs(cp.asnumpy(p_gpu[k]).astype(np.float64) - ref).max())
        rel = err / max(float(np.abs(ref).max()), 1e-30)
        if rel >= worst:
            worst, worst_name = rel, k
    dl = max(abs(a - b) / max(abs(a), 1e-12) for a, b in losses)
    print(f"{label}: losses NumPy vs GPU per step: "
          + ", ".join(f"{a:.6f} / {b:.6f}" for a, b in losses))
    print(f"{label}: max relative loss difference {dl:.2e}; updated weights: worst "
          f"max|diff|/max|w| = {worst:.2e} ({worst_name})")
    ok = dl < 1e-4 and worst < 1e-3
    SUMMARY.append((f"{label} step GPU vs NumPy", f"loss rel {dl:.1e}, weights rel {worst:.1e}",
                    "", "pass" if ok else "FAIL"))


def compare_bag(quick):
    from minembed import bag
    rng = np.random.default_rng(1)
    V, D = 30000, 256
    pairs = 256 if quick else 1024
    params = bag.init_params({"vocab_size": V, "dim": D}, rng)
    ids, offsets = bag_batch(rng, pairs, V)
    compare_step(f"bag (B={pairs} pairs)", bag, {"vocab_size": V, "dim": D}, params, ids, offsets)


def compare_transformer(quick):
    from minembed import transformer
    rng = np.random.default_rng(2)
    cfg = {"vocab_size": 2000, "dim": 64, "layers": 2, "heads": 4, "ffn": 256,
           "max_len": 32, "dropout": 0.0}
    params = transformer.init_params(cfg, rng)
    ids, offsets = bag_batch(rng, 8, cfg["vocab_size"], 5, 40)   # some views cut at max_len
    compare_step("transformer (small)", transformer, cfg, params, ids, offsets)


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


def time_minembed(encoder, enc_cfg, params_np, ids, offsets, warmup, n, kernels_on):
    import cupy as cp
    from minembed import optim
    step = step_fn()
    params = to_dev(params_np)
    state = optim.adam_init(params)
    ids_d, off_d = dev_batch(encoder, ids, offsets)
    sync = cp.cuda.Device().synchronize
    with kernels(kernels_on):
        return timeit(lambda: step(encoder, params, state, ids_d, off_d, enc_cfg),
                      sync, warmup, n)


def torch_sync(torch):
    return torch.cuda.synchronize if TORCH_DEVICE == "cuda" else (lambda: None)


def torch_infonce(F, a, p, scale=20.0):
    import torch
    a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    s = scale * a @ p.T
    return F.cross_entropy(s, torch.arange(s.shape[0], device=s.device))


def time_torch_bag(V, D, ids, offsets, warmup, n, sparse):
    import torch
    import torch.nn.functional as F
    dev = torch.device(TORCH_DEVICE)
    model = torch.nn.EmbeddingBag(V, D, mode="mean", include_last_offset=True,
                                  sparse=sparse).to(dev)
    opt = (torch.optim.SparseAdam(model.parameters(), lr=1e-3) if sparse
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev)
    off_t = torch.as_tensor(offsets, dtype=torch.long, device=dev)
    b = (len(offsets) - 1) // 2

    def step():
        opt.zero_grad(set_to_none=True)
        emb = model(ids_t, off_t)
        loss = torch_infonce(F, emb[:b], emb[b:])
        loss.backward()
        opt.step()
        return loss
    return timeit(step, torch_sync(torch), warmup, n)


def time_torch_transformer(V, cfg, ids, offsets, warmup, n):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from minembed.transformer import layout
    dev = torch.device(TORCH_DEVICE)
    D, T_max = cfg["dim"], cfg["max_len"]
    ids_k, pos, index, key_mask, T = layout(ids, offsets, T_max)
    N = key_mask.shape[0]
    grid = np.zeros(N * T, np.int64)
    grid[index] = ids_k
    ids_t = torch.as_tensor(grid.reshape(N, T), device=dev)
    pad_t = torch.as_tensor(~key_mask, device=dev)                # True = padding
    keep_t = torch.as_tensor(key_mask, device=dev, dtype=torch.float32)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(V, D)
            self.pos = nn.Embedding(T_max, D)
            layer = nn.TransformerEncoderLayer(
                D, cfg["heads"], cfg["ffn"], dropout=0.0, batch_first=True, norm_first=True,
                activation=lambda x: F.gelu(x, approximate="tanh"))
            self.enc = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
            self.ln_f = nn.LayerNorm(D)

        def forward(self, ids, pad):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            x = self.ln_f(self.enc(x, src_key_padding_mask=pad))
            return (x * keep_t[..., None]).sum(1) / keep_t.sum(1, keepdim=True).clamp(min=1)

    model = Enc().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = N // 2

    def step():
        opt.zero_grad(set_to_none=True)
        emb = model(ids_t, pad_t)
        loss = torch_infonce(F, emb[:b], emb[b:])
        loss.backward()
        opt.step()
        return loss
    return timeit(step, torch_sync(torch), warmup, n)


def timings(quick):
    from minembed import bag, transformer
    warm, n = (2, 5) if quick else (3, 15)
    rng = np.random.default_rng(3)

    # bag: B = 4096 pairs, views of 32-64 tokens, V = 30000, D = 256
    V, D, pairs = 30000, 256, 4096
    cfg = {"vocab_size": V, "dim": D}
    params = bag.init_params(cfg, rng)
    ids, offsets = bag_batch(rng, pairs, V)
    t = {}
    for label, fn in (
            ("minembed kernels", lambda: time_minembed(bag, cfg, params, ids, offsets, warm, n, True)),
            ("minembed generic CuPy", lambda: time_minembed(bag, cfg, params, ids, offsets, warm, n, False)),
            ("torch EmbeddingBag + Adam", lambda: time_torch_bag(V, D, ids, offsets, warm, n, False)),
            ("torch EmbeddingBag(sparse) + SparseAdam",
             lambda: time_torch_bag(V, D, ids, offsets, warm, n, True))):
        with guarded(f"bag timing: {label}"):
            t[label] = fn()
            print(f"bag B={pairs}: {label}: {t[label] * 1e3:.2f} ms/step", flush=True)
    report("bag step, B=4096 pairs, 32-64 tok, V=30k, D=256", t,
           "torch EmbeddingBag + Adam", 1.0)

    # transformer: B = 256 pairs, T <= 128, d 256, 4 layers, 4 heads, FFN 1024
    tcfg = {"vocab_size": V, "dim": 256, "layers": 4, "heads": 4, "ffn": 1024,
            "max_len": 128, "dropout": 0.0}
    params = transformer.init_params(tcfg, rng)
    ids, offsets = bag_batch(rng, 256, V, 64, 128)
    t = {}
    for label, fn in (
            ("minembed kernels", lambda: time_minembed(transformer, tcfg, params, ids, offsets, warm, n, True)),
            ("minembed generic CuPy", lambda: time_minembed(transformer, tcfg, params, ids, offsets, warm, n, False)),
            ("torch eager TransformerEncoder + Adam",
             lambda: time_torch_transformer(V, tcfg, ids, offsets, warm, n))):
        with guarded(f"transformer timing: {label}"):
            t[label] = fn()
            print(f"transformer B=256: {label}: {t[label] * 1e3:.2f} ms/step", flush=True)
    report("transformer step, B=256 pairs, T 64-128, d256 L4 H4 F1024, dropout 0", t,
           "torch eager TransformerEncoder + Adam", 1.5)


def report(workload, t, ref_label, target):
    ref = t.get(ref_label)
    for label, sec in t.items():
        ratio = f"{sec / ref:.2f}x torch" if ref else ""
        verdict = ""
        if label == "minembed kernels":
            verdict = ("n/a (no reference)" if ref is None else
                       ("target met" if sec <= target * ref else "target MISSED")
                       + f" (<= {target}x)")
        SUMMARY.append((f"{workload}: {label}", f"{sec * 1e3:.2f} ms", ratio, verdict))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps, smaller compares")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--skip-timings", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()

    section("1. device")
    try:
        device_info()
    except Exception as e:
        print(f"No usable GPU through CuPy ({type(e).__name__}: {e}); nothing to check here.")
        return 2
    with guarded("dispatch"):
        install_dispatch()
    if not args.skip_pytest:
        section("2. pytest tests/test_cuda.py")
        with guarded("pytest"):
            run_pytest(args.quick)
    section("3. kernels vs NumPy twins (fresh random inputs)")
    with guarded("kernel errors"):
        kernel_errors()
    section("4. full training steps: GPU (kernels) vs NumPy")
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
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
