"""The custom CUDA kernels (minembed/fast/kernels.cu, wrappers in minembed/fast/cuda.py).

Three kinds of test:
- everywhere (CI has no GPU): the source compiles with ``nvcc -ptx`` and every
  kernel a wrapper launches is an ``.entry`` of the PTX; the source is fit for
  NVRTC; ``minembed.fast.cuda`` imports without CuPy; each wrapper has its
  reference's signature; the kernels' arithmetic, compiled for the host by g++,
  against the references;
- with a GPU: every wrapper against its reference (minembed/core, run on NumPy
  arrays) on fresh random inputs, over the available backends; skipped with the
  reason where CuPy or a GPU is missing.

``CASES`` is also used by benchmarks/gpu_check.py to print the max errors.
"""
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minembed.core import bag, layers, loss, optim

from minembed.fast import cuda, kernels

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# no GPU needed
# ---------------------------------------------------------------------------
def find_nvcc():
    path = shutil.which("nvcc")
    if path:
        return path
    for cand in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""),
                 "/usr/local/cuda"):
        p = Path(cand) / "bin" / "nvcc"
        if cand and p.exists():
            return str(p)
    return None


def test_nvcc_compiles_every_kernel_to_ptx(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
    ptx = tmp_path / "kernels.ptx"
    res = subprocess.run([nvcc, "-ptx", "-arch=sm_80", "-Werror", "all-warnings",
                          "-o", str(ptx), str(cuda.KERNEL_FILE)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"nvcc -ptx failed:\n{res.stdout}\n{res.stderr}"
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.read_text()))
    missing = set(cuda.KERNEL_NAMES) - entries
    assert not missing, \
        f"kernels used by minembed/fast/cuda.py but not in the PTX: {sorted(missing)}"


def test_kernel_source_fits_nvrtc_and_wrappers():
    src = cuda.kernel_source()
    # NVRTC (cupy.RawModule) compiles with no host headers
    assert not re.search(r"^\s*#\s*include", src, re.M)
    declared = set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(', src))
    assert declared == set(cuda.KERNEL_NAMES), "KERNEL_NAMES and kernels.cu disagree"
    piece = re.search(r"#define\s+SEG_PIECE\s+(\d+)", src)
    assert piece and int(piece.group(1)) == cuda.SEG_PIECE


def test_nvrtc_compiles_kernels_if_available():
    """The compiler CuPy really uses; runs where CuPy and libnvrtc exist (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        prog = nvrtc.createProgram(cuda.kernel_source(), "kernels.cu", [], [])
    except Exception as e:  # CuPy or libnvrtc missing
        pytest.skip(f"NVRTC not usable here: {type(e).__name__}: {e}")
    try:
        nvrtc.compileProgram(prog, ["-arch=compute_80"])
    except Exception as e:
        pytest.fail(f"NVRTC failed: {e}\n{nvrtc.getProgramLog(prog)}")


def test_import_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import numpy as np, minembed.fast.cuda as c, minembed.core.layers, minembed.core.bag, "
            "minembed.core.optim\n"
            "assert not c.use_kernels(np.zeros(3, np.float32))\n"
            "assert 'embedding_bag_forward' in c.kernel_source()\n"
            "print('ok')")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_use_kernels_only_for_cupy_float32():
    assert not cuda.use_kernels(np.zeros(3, np.float32))
    assert not cuda.use_kernels(np.zeros(3, np.float32), None)


TWINS = [
    (cuda.embedding_bag_forward, bag.embedding_bag_forward),
    (cuda.embedding_bag_backward, bag.embedding_bag_backward),
    (cuda.adam_update, optim.adam_update),
    (cuda.adam_update_rows, optim.adam_update_rows),
    (cuda.layernorm_forward, layers.layernorm_forward),
    (cuda.layernorm_backward, layers.layernorm_backward),
    (cuda.gelu_forward, layers.gelu_forward),
    (cuda.gelu_backward, layers.gelu_backward),
    (cuda.softmax_forward, layers.softmax_forward),
    (cuda.softmax_backward, layers.softmax_backward),
    (cuda.infonce_rows, loss.infonce_rows),
]


@pytest.mark.parametrize("wrapper,twin", TWINS, ids=[w.__name__ for w, _ in TWINS])
def test_wrapper_signature_matches_twin(wrapper, twin):
    ws, ts = inspect.signature(wrapper), inspect.signature(twin)
    assert list(ws.parameters) == list(ts.parameters)
    for name, prm in ts.parameters.items():   # same defaults (eps, betas, ...)
        if prm.default is not inspect.Parameter.empty:
            assert ws.parameters[name].default == prm.default, name


# ---------------------------------------------------------------------------
# comparisons with the references (minembed/core; GPU). Each case returns a list of
# (label, got: CuPy array, want: NumPy array, exact: bool).
# ---------------------------------------------------------------------------
def _ragged(rng, n_views, max_len, vocab, heavy=None):
    lengths = rng.integers(0, max_len + 1, n_views)
    lengths[: min(3, n_views)] = [0, 1, max_len][: min(3, n_views)]  # empty, single, full
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, vocab, offsets[-1]).astype(np.int32)
    if heavy is not None:  # a Zipf-like head: one id takes ~30% of the tokens (many pieces)
        ids[rng.random(ids.shape[0]) < 0.3] = heavy
    return ids, offsets


def case_bag(rng, cp):
    out = []
    for V, D in ((1000, 64), (300, 100)):
        table = rng.standard_normal((V, D)).astype(np.float32)
        ids, offsets = _ragged(rng, 120, 60, V, heavy=7)
        want, wc = bag.embedding_bag_forward.reference(table, ids, offsets)
        got, gc = cuda.embedding_bag_forward(cp.asarray(table), cp.asarray(ids),
                                             cp.asarray(offsets))
        out.append((f"bag forward D={D}", got, want, False))
        dout = rng.standard_normal(want.shape).astype(np.float32)
        w = bag.embedding_bag_backward.reference(dout, wc)
        rows, values = cuda.embedding_bag_backward(cp.asarray(dout), gc)
        out.append((f"bag backward rows D={D}", rows, np.asarray(w.rows), True))
        out.append((f"bag backward values D={D}", values, np.asarray(w.values), False))
    return out


def case_segment_sum(rng, cp):
    """The bag backward as a plain segmented sum (views of one token each, the
    transformer's lookups), with a run of ~1500 equal keys: many pieces."""
    keys = rng.integers(0, 50, 3000).astype(np.int32)
    keys[rng.random(3000) < 0.5] = 3
    values = rng.standard_normal((3000, 24)).astype(np.float32)
    table = np.zeros((50, 24), np.float32)
    one_each = np.arange(3001)
    _, wc = bag.embedding_bag_forward.reference(table, keys, one_each)
    want = bag.embedding_bag_backward.reference(values, wc)
    _, gc = cuda.embedding_bag_forward(cp.asarray(table), cp.asarray(keys), cp.asarray(one_each))
    rows, sums = cuda.embedding_bag_backward(cp.asarray(values), gc)
    return [("segment_sum rows", rows, np.asarray(want.rows), True),
            ("segment_sum values", sums, np.asarray(want.values), False)]


def case_adam(rng, cp):
    out = []
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    p, g, m = (rng.standard_normal((300, 40)).astype(np.float32) for _ in range(3))
    v = rng.random((300, 40)).astype(np.float32)
    dev = [cp.asarray(a) for a in (p, g, m, v)]
    optim.adam_update.reference(p, g, m, v, 3, **kw)
    cuda.adam_update(dev[0], dev[1], dev[2], dev[3], 3, **kw)
    out += [("adam p", dev[0], p, False), ("adam m", dev[2], m, False),
            ("adam v", dev[3], v, False)]
    # lazy rows, no weight decay
    p, m = (rng.standard_normal((500, 48)).astype(np.float32) for _ in range(2))
    v = rng.random((500, 48)).astype(np.float32)
    rows = np.sort(rng.choice(500, 120, replace=False)).astype(np.int32)
    g_rows = rng.standard_normal((120, 48)).astype(np.float32)
    dev = [cp.asarray(a) for a in (p, m, v)]
    optim.adam_update_rows.reference(p, rows, g_rows, m, v, 1, lr=1e-3)
    cuda.adam_update_rows(dev[0], cp.asarray(rows), cp.asarray(g_rows), dev[1], dev[2], 1, lr=1e-3)
    out += [("adam_rows p", dev[0], p, False), ("adam_rows m", dev[1], m, False),
            ("adam_rows v", dev[2], v, False)]
    return out


def case_layernorm(rng, cp):
    x = (rng.standard_normal((7, 13, 96)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal(96).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want, wc = layers.layernorm_forward.reference(x, g, b)
    got, gc = cuda.layernorm_forward(cp.asarray(x), cp.asarray(g), cp.asarray(b))
    wdx, wdg, wdb = layers.layernorm_backward.reference(dy, wc)
    gdx, gdg, gdb = cuda.layernorm_backward(cp.asarray(dy), gc)
    # the backward also takes the NumPy twin's cache (xhat, rstd, g)
    tdx, tdg, tdb = cuda.layernorm_backward(cp.asarray(dy), tuple(cp.asarray(a) for a in wc))
    return [("layernorm y", got, want, False), ("layernorm dx", gdx, wdx, False),
            ("layernorm dg", gdg, wdg, False), ("layernorm db", gdb, wdb, False),
            ("layernorm dx (twin cache)", tdx, wdx, False),
            ("layernorm dg (twin cache)", tdg, wdg, False)]


def case_gelu(rng, cp):
    x = (rng.standard_normal((33, 257)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want, wc = layers.gelu_forward.reference(x)
    got, gc = cuda.gelu_forward(cp.asarray(x))
    wdx = layers.gelu_backward.reference(dy, wc)
    gdx = cuda.gelu_backward(cp.asarray(dy), gc)
    tdx = cuda.gelu_backward(cp.asarray(dy), tuple(cp.asarray(a) for a in wc))
    return [("gelu y", got, want, False), ("gelu dx", gdx, wdx, False),
            ("gelu dx (twin cache)", tdx, wdx, False)]


def case_softmax(rng, cp):
    out = []
    N, H, T = 4, 3, 37
    z = (rng.standard_normal((N, H, T, T)) * 4).astype(np.float32)
    key_mask = rng.random((N, T)) < 0.7
    key_mask[1] = False                                     # a view with no keys
    key_mask[2] = True
    causal = np.tril(np.ones((T, T), bool))                 # a mask of another shape
    dp = rng.standard_normal(z.shape).astype(np.float32)
    for label, m in (("key mask", key_mask[:, None, None, :]), ("no mask", None),
                     ("causal mask", causal)):
        want, wc = layers.softmax_forward.reference(z, m)
        got, gc = cuda.softmax_forward(cp.asarray(z), None if m is None else cp.asarray(m))
        out.append((f"softmax p ({label})", got, want, False))
        out.append((f"softmax dz ({label})", cuda.softmax_backward(cp.asarray(dp), gc),
                    layers.softmax_backward.reference(dp, wc), False))
    # masked keys exactly 0, the fully masked view all 0
    got, _ = cuda.softmax_forward(cp.asarray(z), cp.asarray(key_mask[:, None, None, :]))
    zero = np.where(np.broadcast_to(key_mask[:, None, None, :], z.shape), 1.0,
                    0.0).astype(np.float32)
    out.append(("softmax masked keys == 0", got * cp.asarray(1.0 - zero), np.zeros_like(z), True))
    return out


def case_infonce_rows(rng, cp):
    out = []
    for R, C, scale in ((37, 37, 20.0), (64, 64, 1e3), (5, 300, 5.0)):
        s = (rng.standard_normal((R, C)) * scale / 4).astype(np.float32)
        s[3, 3] = s[3].max() + 1.0               # a hit
        s[4, 7] = s[4, 4] = s[4].max() + 1.0     # a tie: the first maximum (4) counts
        wg, wl, wh = loss.infonce_rows.reference(s)
        gg, gl, gh = cuda.infonce_rows(cp.asarray(s))
        out += [(f"infonce_rows g {R}x{C}", gg, wg, False),
                (f"infonce_rows loss {R}x{C}", gl, wl, False),
                (f"infonce_rows hit {R}x{C}", gh, wh, True)]
    return out


CASES = {"bag": case_bag, "infonce_rows": case_infonce_rows, "segment_sum": case_segment_sum,
         "adam": case_adam, "layernorm": case_layernorm, "gelu": case_gelu, "softmax": case_softmax}

RTOL, ATOL = 1e-4, 1e-5


def max_errors(results):
    """[(label, max abs error, max error relative to max |want|)] for printing."""
    rows = []
    for label, got, want, _ in results:
        got = got.get() if hasattr(got, "get") else np.asarray(got)
        want = np.asarray(want)
        if got.shape != want.shape:
            rows.append((label, float("inf"), float("inf")))
            continue
        err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        scale = float(np.abs(want).max()) if want.size else 1.0
        rows.append((label, err, err / max(scale, 1e-30)))
    return rows


def gpu_skip_reason():
    try:
        import cupy
    except Exception as e:
        return f"CuPy is not importable ({type(e).__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no usable CUDA GPU ({type(e).__name__}: {e})"
    return None if n > 0 else "no CUDA GPU found"


_REASON = gpu_skip_reason()
# Backends with custom kernels; the reference function is what each is held to.
BACKENDS = [pytest.param("cupy", marks=pytest.mark.skipif(_REASON is not None,
                                                          reason=str(_REASON)))]


@pytest.fixture(params=BACKENDS)
def xp(request):
    import cupy
    return cupy


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_its_reference(xp, case, seed):
    rng = np.random.default_rng(seed)
    results = CASES[case](rng, xp)
    for label, got, want, exact in results:
        got = xp.asnumpy(got)
        assert got.shape == np.asarray(want).shape, label
        if exact:
            np.testing.assert_array_equal(got, want, err_msg=label)
        else:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=label)


def test_kernels_deterministic(xp):
    """The segmented sums use no atomics: two runs give identical bits."""
    rng = np.random.default_rng(5)
    keys = xp.asarray(rng.integers(0, 20, 5000).astype(np.int32))
    values = xp.asarray(rng.standard_normal((5000, 64)).astype(np.float32))
    table, one_each = xp.zeros((20, 64), xp.float32), xp.arange(5001)
    a = cuda.embedding_bag_backward(values, cuda.embedding_bag_forward(table, keys, one_each)[1])[1]
    b = cuda.embedding_bag_backward(values, cuda.embedding_bag_forward(table, keys, one_each)[1])[1]
    assert bool((a == b).all())


def test_empty_inputs(xp):
    table = xp.ones((10, 8), dtype=xp.float32)
    out, c = cuda.embedding_bag_forward(table, xp.zeros(0, xp.int32), xp.zeros(3, xp.int64))
    assert out.shape == (2, 8) and float(abs(out).max()) == 0.0
    rows, values = cuda.embedding_bag_backward(xp.ones((2, 8), xp.float32), c)
    assert rows.shape == (0,) and values.shape == (0, 8)


# ---------------------------------------------------------------------------
# kernel logic without a GPU: kernels.cu compiled for the host by g++ with a
# small emulator (one std::thread per CUDA thread, a block at a time; C++20
# barriers for __syncthreads and the warp shuffles) behind a NumPy stand-in
# for the few CuPy calls minembed.fast.cuda makes. It runs the real wrappers and
# the real kernel code against the references, so CI checks the kernels'
# arithmetic and indexing; it cannot see races or GPU-only behaviour.
# ---------------------------------------------------------------------------
EMU_SHIM = r'''
#include <math.h>
#include <string.h>
#include <thread>
#include <vector>
#include <barrier>
#include <functional>
struct dim3_ { unsigned x = 0, y = 0, z = 0; };
static thread_local dim3_ threadIdx, blockIdx;
static dim3_ blockDim, gridDim;
static std::barrier<>* g_bar = nullptr;
static std::barrier<>* g_wbar[64];
static float g_wbuf[64][32];
static float g_dyn_shared[1 << 16];
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
static inline void __syncthreads() { g_bar->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int o) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_wbuf[w][l] = v; g_wbar[w]->arrive_and_wait();
  float r = g_wbuf[w][l ^ o]; g_wbar[w]->arrive_and_wait(); return r; }
static int g_wbuf_i[64][32];
static inline int __shfl_xor_sync(unsigned, int v, int o) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_wbuf_i[w][l] = v; g_wbar[w]->arrive_and_wait();
  int r = g_wbuf_i[w][l ^ o]; g_wbar[w]->arrive_and_wait(); return r; }
static inline float __int_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static void run_grid(unsigned gx, unsigned bx, std::function<void()> body) {
  gridDim.x = gx; blockDim.x = bx;
  for (unsigned b = 0; b < gx; ++b) {
    std::barrier<> bar(bx); g_bar = &bar;
    std::vector<std::barrier<>*> wb;
    for (unsigned w = 0; w < (bx + 31) / 32; ++w) { g_wbar[w] = new std::barrier<>(32); }
    std::vector<std::thread> th;
    for (unsigned t = 0; t < bx; ++t)
      th.emplace_back([=]() { blockIdx.x = b; threadIdx.x = t; body(); });
    for (auto& x : th) x.join();
    for (unsigned w = 0; w < (bx + 31) / 32; ++w) delete g_wbar[w];
  }
}
'''


def _emu_build(src, workdir):
    src = re.sub(r"//[^\n]*", "", src)
    src = src.replace("extern __shared__ float sh[];", "float* sh = g_dyn_shared;")
    stubs = []
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\((.*?)\)\s*\{', src, re.S):
        name, params = m.group(1), m.group(2)
        types_ = [re.sub(r"\b\w+\s*$", "", prm.replace("__restrict__", "").strip()).strip()
                  for prm in params.split(",")]
        call = ", ".join(f"*({t}*)a[{i}]" for i, t in enumerate(types_))
        stubs.append(f'extern "C" void launch_{name}(unsigned gx, unsigned bx, void** a) '
                     f'{{ run_grid(gx, bx, [=]() {{ {name}({call}); }}); }}')
    cpp, so = Path(workdir) / "kernels_emu.cpp", Path(workdir) / "kernels_emu.so"
    cpp.write_text(EMU_SHIM + src + "\n" + "\n".join(stubs) + "\n")
    res = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                          str(cpp), "-o", str(so)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"g++ failed on the emulated kernels:\n{res.stderr[-3000:]}"
    import ctypes
    return ctypes.CDLL(str(so))


def _fake_cupy(workdir):
    import ctypes
    import types

    class Fn:
        def __init__(self, lib, name):
            self.f, self.name = getattr(lib, "launch_" + name), name

        def __call__(self, grid, block, args, shared_mem=0):
            keep = []
            for a in args:
                if isinstance(a, np.ndarray):
                    assert a.flags.c_contiguous, self.name
                    keep.append(ctypes.c_void_p(a.ctypes.data))
                else:
                    ctype = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64,
                             np.float32: ctypes.c_float}[type(a)]
                    keep.append(ctype(a.item()))
            ptrs = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(c) for c in keep])
            assert shared_mem <= 4 << 16 and block[0] <= 2048
            self.f(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), ptrs)

    class RawModule:
        def __init__(self, code, options=()):
            self.lib = _emu_build(code, workdir)

        def get_function(self, name):
            return Fn(self.lib, name)

    cp = types.ModuleType("cupy")
    for n in ("asarray ascontiguousarray empty empty_like zeros argsort not_equal flatnonzero "
              "cumsum maximum bool_ int32 int64 float32 broadcast_to").split():
        setattr(cp, n, getattr(np, n))
    cp.asnumpy, cp.RawModule = np.asarray, RawModule
    dev = types.SimpleNamespace(attributes={"MultiProcessorCount": 2})
    cp.cuda = types.SimpleNamespace(Device=lambda *a: dev)
    return cp


def test_kernels_emulated_on_cpu_match_their_references(tmp_path, monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot emulate the kernels on the CPU")
    fake = _fake_cupy(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(kernels, "_module", None)     # compile the emulated module, then
    monkeypatch.setattr(kernels, "_functions", {})    # restore the real one afterwards
    rng = np.random.default_rng(0)
    for name in sorted(CASES):
        for label, got, want, exact in CASES[name](rng, fake):
            assert np.shape(got) == np.shape(want), label
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=label)
            else:
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=label)
