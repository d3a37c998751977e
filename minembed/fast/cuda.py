"""The GPU backend's custom CUDA kernels, one Python wrapper per op.

The kernels live together in ``minembed/kernels/kernels.cu`` (``extern "C"``,
float32, the maths in comments). This module compiles that file once, lazily,
with ``cupy.RawModule`` (NVRTC) and caches it; CuPy is imported only inside
functions, so ``import minembed.cuda`` works where CuPy is absent.

Each wrapper has the signature and return convention of the NumPy layer
function it replaces (its *twin*, the reference in tests/test_cuda.py); the
twins call them when their arrays are CuPy float32 arrays:

    if cuda.use_kernels(x):            # CuPy, float32, kernels enabled
        return cuda.layernorm_forward(x, g, b, eps)

Caches: a wrapper's cache is meant for the matching CUDA backward. Where the
GPU version can keep less than the NumPy one it does (LayerNorm keeps x, mean
and rstd instead of xhat; GELU keeps x only and recomputes tanh; the bag keeps
the ids and offsets), and the backward wrappers also accept the NumPy twin's
cache where that is cheap (LayerNorm, GELU, softmax).

Set ``MINEMBED_CUDA_KERNELS=0`` (or ``minembed.cuda.ENABLED = False``) to run
the generic CuPy code instead, e.g. to time one against the other.
"""
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

KERNEL_FILE = Path(__file__).resolve().parent / "kernels.cu"
ENABLED = os.environ.get("MINEMBED_CUDA_KERNELS", "1") != "0"
SEG_PIECE = 32        # must equal SEG_PIECE in kernels.cu (checked by the tests)
THREADS = 256         # threads per block for the elementwise and row kernels

# every kernel a wrapper launches (tests check each is an .entry in the PTX)
KERNEL_NAMES = (
    "embedding_bag_forward", "segment_flags", "segment_bounds",
    "segment_sum_partial", "segment_sum_combine",
    "adam_update", "adam_update_rows",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "softmax_forward", "softmax_backward", "infonce_rows",
)

_module = None
_functions = {}


def kernel_source():
    """The CUDA source text of all kernels."""
    return KERNEL_FILE.read_text()


def _cp():
    import cupy  # optional dependency: never imported at module top level
    return cupy


def _kernel(name):
    """The compiled kernel ``name`` (the module is compiled on first use)."""
    global _module
    fn = _functions.get(name)
    if fn is None:
        if _module is None:
            _module = _cp().RawModule(code=kernel_source())
        fn = _functions[name] = _module.get_function(name)
    return fn


def use_kernels(*arrays):
    """True when the custom kernels should handle these arrays: kernels are
    enabled, every array is a CuPy array, and the floating ones are float32."""
    if not ENABLED:
        return False
    for a in arrays:
        if a is None:
            continue
        if not type(a).__module__.startswith("cupy"):
            return False
        if a.dtype.kind == "f" and a.dtype != np.float32:
            return False
    return True


def _f32(a):
    """A C-contiguous float32 CuPy array (no copy when it already is one)."""
    cp = _cp()
    a = cp.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"minembed.cuda kernels take float32 arrays, got {a.dtype}")
    return cp.ascontiguousarray(a)


def _grid(n, threads=THREADS, cap=65536):
    """Blocks for a grid-stride loop over n items."""
    return (max(1, min(cap, -(-int(n) // threads))),)


def _row_block(d):
    """Threads for a block that loops over d columns."""
    return (min(THREADS, max(32, -(-int(d) // 32) * 32)),)


def _sm_count():
    return _cp().cuda.Device().attributes["MultiProcessorCount"]


# ---------------------------------------------------------------------------
# bag of token embeddings   (twins: bag.embedding_bag_forward / _backward)
# ---------------------------------------------------------------------------
class BagCache(NamedTuple):
    """What the CUDA bag backward needs: the ids, the offsets, and view_of[t],
    the view holding token t (written by the forward kernel)."""
    ids: object
    offsets: object
    view_of: object


def embedding_bag_forward(table, ids, offsets):
    """Mean of each view's token rows: out (N, D), BagCache. Empty view -> 0."""
    cp = _cp()
    table = _f32(table)
    ids = cp.ascontiguousarray(cp.asarray(ids, dtype=cp.int32))
    offsets = cp.ascontiguousarray(cp.asarray(offsets, dtype=cp.int64))
    n = offsets.shape[0] - 1
    D = table.shape[1]
    out = cp.empty((n, D), dtype=cp.float32)
    view_of = cp.empty(ids.shape[0], dtype=cp.int32)
    if n > 0:
        _kernel("embedding_bag_forward")((n,), _row_block(D),
                                         (table, ids, offsets, np.int32(D), out, view_of))
    return out, BagCache(ids, offsets, view_of)


def embedding_bag_backward(dout, cache):
    """(rows, values): d table[rows] = sum over occurrences of dout[view] / len
    (the twin wraps them in a RowGrad)."""
    ids, offsets, view_of = cache
    return _segment_sum(ids, _f32(dout), src_row=view_of, w_offsets=offsets)


def _segment_sum(keys, src, src_row=None, w_offsets=None):
    """Sorted distinct keys (int32) and values[u] = sum_{t: key_t = rows_u} w(r(t)) src[r(t)],
    r(t) = src_row[t] (or t), w(i) = 1 / len_i from w_offsets (or 1). Sort once,
    then four small kernels and one number read back (see kernels.cu)."""
    cp = _cp()
    M = keys.shape[0]
    D = int(np.prod(src.shape[1:], dtype=np.int64))
    if M == 0:
        return cp.zeros(0, dtype=cp.int32), cp.zeros((0, D), dtype=cp.float32)
    keys = cp.ascontiguousarray(keys.astype(cp.int32, copy=False))
    order = cp.argsort(keys).astype(cp.int64, copy=False)        # (M,) radix sort
    flag = cp.empty(M, dtype=cp.int32)
    _kernel("segment_flags")(_grid(M), (THREADS,), (keys, order, np.int64(M), flag))
    run = cp.cumsum(flag, dtype=cp.int64)                         # run[t] - 1: t's run
    U = int(run[-1])                                              # the one sync
    rows = cp.empty(U, dtype=cp.int32)
    seg_start = cp.empty(U, dtype=cp.int64)
    seg_end = cp.empty(U, dtype=cp.int64)
    _kernel("segment_bounds")(_grid(M), (THREADS,),
                              (keys, order, run, np.int64(M), rows, seg_start, seg_end))
    piece_off = cp.zeros(U + 1, dtype=cp.int64)
    cp.cumsum((seg_end - seg_start + (SEG_PIECE - 1)) // SEG_PIECE, out=piece_off[1:])
    max_pieces = U + M // SEG_PIECE          # >= the number of pieces, known without a sync
    values = cp.empty((U, D), dtype=cp.float32)
    partial = cp.empty((max_pieces, D), dtype=cp.float32)
    dummy_i = cp.empty(1, dtype=cp.int32)
    dummy_l = cp.empty(1, dtype=cp.int64)
    block = _row_block(D)
    _kernel("segment_sum_partial")(
        (max_pieces,), block,
        (order, dummy_i if src_row is None else src_row, np.int32(src_row is not None),
         dummy_l if w_offsets is None else w_offsets, np.int32(w_offsets is not None),
         seg_start, seg_end, piece_off, np.int32(U), src, np.int32(D), values, partial))
    if max_pieces > U:                       # some run may have several pieces
        _kernel("segment_sum_combine")((U,), block, (piece_off, partial, np.int32(D), values))
    return rows, values


# ---------------------------------------------------------------------------
# Adam / AdamW   (twins: optim.adam_update / optim.adam_update_rows)
# ---------------------------------------------------------------------------
def _adam_scalars(step, lr, beta1, beta2, eps, weight_decay):
    # as optim._apply: bias corrections folded into lr_t and eps_t
    c2 = math.sqrt(1.0 - beta2 ** step)
    lr_t = lr * c2 / (1.0 - beta1 ** step)
    decay = 1.0 - lr * weight_decay if weight_decay else 1.0
    return (np.float32(beta1), np.float32(beta2), np.float32(decay),
            np.float32(lr_t), np.float32(eps * c2))


def _check_inplace(*arrays):
    for a in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise TypeError("minembed.cuda Adam updates in place: p, m, v must be "
                            "C-contiguous float32 CuPy arrays")


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One dense AdamW update of p, m, v in place (one fused kernel)."""
    _check_inplace(p, m, v)
    g = _f32(g)
    n = p.size
    _kernel("adam_update")(_grid(n), (THREADS,),
                           (p, g, m, v, np.int64(n),
                            *_adam_scalars(step, lr, beta1, beta2, eps, weight_decay)))


def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
    """Lazy AdamW on p[rows], m[rows], v[rows] only, in place; rows distinct."""
    cp = _cp()
    _check_inplace(p, m, v)
    rows = cp.ascontiguousarray(cp.asarray(rows, dtype=cp.int64))
    U = rows.shape[0]
    D = p.size // p.shape[0] if p.shape[0] else 0
    if U == 0 or D == 0:
        return
    g_rows = _f32(g_rows)
    _kernel("adam_update_rows")(_grid(U * D), (THREADS,),
                                (p, rows, g_rows, m, v, np.int64(U), np.int32(D),
                                 *_adam_scalars(step, lr, beta1, beta2, eps, weight_decay)))


# ---------------------------------------------------------------------------
# LayerNorm   (twins: layers.layernorm_forward / _backward)
# ---------------------------------------------------------------------------
class LNCache(NamedTuple):
    """x itself (the caller keeps it alive anyway), the per-row mean and rstd
    (rows,), and g: the backward recomputes xhat = (x - mean) * rstd."""
    x: object
    mean: object
    rstd: object
    g: object


def layernorm_forward(x, g, b, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * g + b over the last dim; (y, LNCache)."""
    cp = _cp()
    x, g, b = _f32(x), _f32(g), _f32(b)
    C = x.shape[-1]
    rows = x.size // C if C else 0
    y = cp.empty_like(x)
    mean = cp.empty(rows, dtype=cp.float32)
    rstd = cp.empty(rows, dtype=cp.float32)
    if rows:
        wpb = THREADS // 32
        _kernel("layernorm_forward")(_grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                                     (x, g, b, y, mean, rstd, np.int64(rows), np.int32(C),
                                      np.float32(eps)))
    return y, LNCache(x, mean, rstd, g)


def layernorm_backward(dy, cache):
    """(dx, dg, db). cache: an LNCache, or the NumPy twin's (xhat, rstd, g)."""
    cp = _cp()
    if isinstance(cache, LNCache):
        x, mean, rstd, g = cache
        x_is_xhat = 0
    else:
        x, rstd, g = cache                 # the NumPy twin's cache: x holds xhat
        mean, x_is_xhat = None, 1
    dy, x, rstd, g = _f32(dy), _f32(x), _f32(rstd), _f32(g)
    C = x.shape[-1]
    rows = x.size // C if C else 0
    dx = cp.empty_like(x)
    if rows == 0:
        z = cp.zeros(C, dtype=cp.float32)
        return dx, z, z.copy()
    if mean is None:
        mean = rstd                        # unused by the kernel when x_is_xhat
    # warps a block: their (2, C) shared slices must fit in 48 KiB
    wpb = max(1, min(THREADS // 32, (48 * 1024) // (8 * C)))
    if 8 * C > 48 * 1024:
        raise ValueError(f"layernorm_backward kernel: C = {C} too large (max 6144)")
    blocks = max(1, min(-(-rows // wpb), 4 * _sm_count()))
    partial = cp.empty((blocks, 2, C), dtype=cp.float32)
    _kernel("layernorm_backward")((blocks,), (32 * wpb,),
                                  (dy, x, mean, rstd, g, np.int32(x_is_xhat), dx, partial,
                                   np.int64(rows), np.int32(C)),
                                  shared_mem=wpb * 2 * C * 4)
    sums = partial.sum(axis=0)             # (2, C): dg, db
    return dx, sums[0], sums[1]


# ---------------------------------------------------------------------------
# GELU, tanh approximation   (twins: layers.gelu_forward / _backward)
# ---------------------------------------------------------------------------
def gelu_forward(x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); cache (x, None):
    the backward recomputes the tanh rather than storing it."""
    cp = _cp()
    x = _f32(x)
    y = cp.empty_like(x)
    n = x.size
    if n:
        _kernel("gelu_forward")(_grid(n), (THREADS,), (x, y, np.int64(n)))
    return y, (x, None)


def gelu_backward(dy, cache):
    """dx = dy * gelu'(x). cache: (x, None) from here or the twin's (x, t)."""
    cp = _cp()
    x = _f32(cache[0])
    dy = _f32(dy)
    dx = cp.empty_like(x)
    n = x.size
    if n:
        _kernel("gelu_backward")(_grid(n), (THREADS,), (dy, x, dx, np.int64(n)))
    return dx


# ---------------------------------------------------------------------------
# softmax over the last dim with a key mask   (twins: layers.softmax_forward / _backward)
# ---------------------------------------------------------------------------
def _mask_rows(mask, shape):
    """(mask2d uint8 (R, T), rows_per_mask): score row r uses mask row r // rows_per_mask.

    A mask that varies only over the leading dims and the last one, like a key
    mask (N, 1, 1, T) for scores (N, H, T, T), is used as it is; any other
    broadcastable mask is materialised to the scores' shape."""
    cp = _cp()
    mask = cp.asarray(mask)
    nd = len(shape)
    ms = (1,) * (nd - mask.ndim) + tuple(mask.shape)
    if ms[-1] == shape[-1]:
        k = 0                                   # leading dims the mask matches
        while k < nd - 1 and ms[k] == shape[k]:
            k += 1
        if all(s == 1 for s in ms[k:nd - 1]):
            R = int(np.prod(shape[:k], dtype=np.int64))
            per = int(np.prod(shape[k:nd - 1], dtype=np.int64))
            m2 = cp.ascontiguousarray(mask.reshape(R, shape[-1])).astype(cp.bool_, copy=False)
            return m2, max(per, 1)
    full = cp.ascontiguousarray(cp.broadcast_to(mask, shape)).astype(cp.bool_, copy=False)
    return full.reshape(-1, shape[-1]), 1


def softmax_forward(z, mask=None):
    """p = softmax(z) over the last dim, masked keys (mask False) exactly 0,
    all-masked rows all 0; (p, (p,)) as the twin."""
    cp = _cp()
    z = _f32(z)
    T = z.shape[-1]
    rows = z.size // T if T else 0
    p = cp.empty_like(z)
    if rows == 0:
        return p, (p,)
    if mask is None:
        m2, per, has = cp.empty(1, dtype=cp.bool_), 1, 0
    else:
        (m2, per), has = _mask_rows(mask, z.shape), 1
    wpb = THREADS // 32
    _kernel("softmax_forward")(_grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                               (z, m2, np.int32(has), np.int64(per), p, np.int64(rows),
                                np.int32(T)))
    return p, (p,)


def softmax_backward(dp, cache):
    """dz = p * (dp - sum(dp * p)) over the last dim."""
    cp = _cp()
    (p,) = cache
    p, dp = _f32(p), _f32(dp)
    T = p.shape[-1]
    rows = p.size // T if T else 0
    dz = cp.empty_like(p)
    if rows:
        wpb = THREADS // 32
        _kernel("softmax_backward")(_grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                                    (dp, p, dz, np.int64(rows), np.int32(T)))
    return dz


# ---------------------------------------------------------------------------
# InfoNCE rows   (twin: loss.infonce_rows)
# ---------------------------------------------------------------------------
def infonce_rows(s):
    """(g, loss, hit) of the similarity matrix s (R, C), target = the diagonal:
    g = softmax(s) - I (R, C), per-row cross-entropy loss (R,), and hit (R,)
    bool: whether row i's largest entry is s_ii. One kernel."""
    cp = _cp()
    s = _f32(s)
    R, C = s.shape
    g = cp.empty_like(s)
    loss = cp.empty(R, dtype=cp.float32)
    hit = cp.empty(R, dtype=cp.bool_)
    if R:
        _kernel("infonce_rows")((R,), _row_block(C), (s, np.int32(C), g, loss, hit))
    return g, loss, hit
