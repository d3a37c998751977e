"""The GPU's fast twins: one Python wrapper per CUDA kernel op.

The kernels live together in ``minembed/fast/kernels.cu`` (``extern "C"``,
float32, the maths in comments); kernels.py compiles and launches them. CuPy
is imported only inside functions, so this imports where CuPy is absent.

Each wrapper has the signature and return convention of the reference function
it stands in for (its *twin*: tests/test_cuda.py holds them to it). ``TWINS``
below registers them for CuPy arrays (minembed/fast/__init__.py); each runs its
kernel when its arrays are float32 and the kernels are enabled, else the
reference:

    layers.layernorm_forward(x, g, b)  # x a CuPy float32 array: cuda.layernorm_forward

Caches: a wrapper's cache is meant for the matching CUDA backward. Where the
GPU version can keep less than the NumPy one it does (LayerNorm keeps x, mean
and rstd instead of xhat; GELU keeps x only and recomputes tanh; the bag keeps
the ids and offsets), and the backward wrappers also accept the NumPy twin's
cache where that is cheap (LayerNorm, GELU, softmax).

Set ``MINEMBED_CUDA_KERNELS=0`` (or ``minembed.fast.kernels.ENABLED = False``) to
run the references on CuPy instead, e.g. to time one against the other.
"""
import math
from typing import NamedTuple

import numpy as np

from ..core import bag, layers, loss, optim
from ..core.layers import RowGrad
from .kernels import (KERNEL_FILE, KERNEL_NAMES, SEG_PIECE, THREADS, cupy, enabled, f32, grid,  # noqa: F401
                      kernel, kernel_source, row_block, sm_count, use_kernels)


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
    cp = cupy()
    table = f32(table)
    ids = cp.ascontiguousarray(cp.asarray(ids, dtype=cp.int32))
    offsets = cp.ascontiguousarray(cp.asarray(offsets, dtype=cp.int64))
    n = offsets.shape[0] - 1
    D = table.shape[1]
    out = cp.empty((n, D), dtype=cp.float32)
    view_of = cp.empty(ids.shape[0], dtype=cp.int32)
    if n > 0:
        kernel("embedding_bag_forward")((n,), row_block(D),
                                         (table, ids, offsets, np.int32(D), out, view_of))
    return out, BagCache(ids, offsets, view_of)


def embedding_bag_backward(dout, cache):
    """(rows, values): d table[rows] = sum over occurrences of dout[view] / len
    (the twin wraps them in a RowGrad)."""
    ids, offsets, view_of = cache
    return _segment_sum(ids, f32(dout), src_row=view_of, w_offsets=offsets)


def _segment_sum(keys, src, src_row=None, w_offsets=None):
    """Sorted distinct keys (int32) and values[u] = sum_{t: key_t = rows_u} w(r(t)) src[r(t)],
    r(t) = src_row[t] (or t), w(i) = 1 / len_i from w_offsets (or 1). Sort once,
    then four small kernels and one number read back (see kernels.cu)."""
    cp = cupy()
    M = keys.shape[0]
    D = int(np.prod(src.shape[1:], dtype=np.int64))
    if M == 0:
        return cp.zeros(0, dtype=cp.int32), cp.zeros((0, D), dtype=cp.float32)
    keys = cp.ascontiguousarray(keys.astype(cp.int32, copy=False))
    order = cp.argsort(keys).astype(cp.int64, copy=False)        # (M,) radix sort
    flag = cp.empty(M, dtype=cp.int32)
    kernel("segment_flags")(grid(M), (THREADS,), (keys, order, np.int64(M), flag))
    run = cp.cumsum(flag, dtype=cp.int64)                         # run[t] - 1: t's run
    U = int(run[-1])                                              # the one sync
    rows = cp.empty(U, dtype=cp.int32)
    seg_start = cp.empty(U, dtype=cp.int64)
    seg_end = cp.empty(U, dtype=cp.int64)
    kernel("segment_bounds")(grid(M), (THREADS,),
                              (keys, order, run, np.int64(M), rows, seg_start, seg_end))
    piece_off = cp.zeros(U + 1, dtype=cp.int64)
    cp.cumsum((seg_end - seg_start + (SEG_PIECE - 1)) // SEG_PIECE, out=piece_off[1:])
    max_pieces = U + M // SEG_PIECE          # >= the number of pieces, known without a sync
    values = cp.empty((U, D), dtype=cp.float32)
    partial = cp.empty((max_pieces, D), dtype=cp.float32)
    dummy_i = cp.empty(1, dtype=cp.int32)
    dummy_l = cp.empty(1, dtype=cp.int64)
    block = row_block(D)
    kernel("segment_sum_partial")(
        (max_pieces,), block,
        (order, dummy_i if src_row is None else src_row, np.int32(src_row is not None),
         dummy_l if w_offsets is None else w_offsets, np.int32(w_offsets is not None),
         seg_start, seg_end, piece_off, np.int32(U), src, np.int32(D), values, partial))
    if max_pieces > U:                       # some run may have several pieces
        kernel("segment_sum_combine")((U,), block, (piece_off, partial, np.int32(D), values))
    return rows, values


# ---------------------------------------------------------------------------
# Adam / AdamW   (twins: optim.adam_update / optim.adam_update_rows)
# ---------------------------------------------------------------------------
def _adam_scalars(step, lr, beta1, beta2, eps, weight_decay):
    # as the CPU twin (fast/cpu.py): bias corrections folded into lr_t and eps_t
    c2 = math.sqrt(1.0 - beta2 ** step)
    lr_t = lr * c2 / (1.0 - beta1 ** step)
    decay = 1.0 - lr * weight_decay if weight_decay else 1.0
    return (np.float32(beta1), np.float32(beta2), np.float32(decay),
            np.float32(lr_t), np.float32(eps * c2))


def _check_inplace(*arrays):
    for a in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise TypeError("minembed.fast.cuda Adam updates in place: p, m, v must be "
                            "C-contiguous float32 CuPy arrays")


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One dense AdamW update of p, m, v in place (one fused kernel)."""
    _check_inplace(p, m, v)
    g = f32(g)
    n = p.size
    kernel("adam_update")(grid(n), (THREADS,),
                           (p, g, m, v, np.int64(n),
                            *_adam_scalars(step, lr, beta1, beta2, eps, weight_decay)))


def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
    """Lazy AdamW on p[rows], m[rows], v[rows] only, in place; rows distinct."""
    cp = cupy()
    _check_inplace(p, m, v)
    rows = cp.ascontiguousarray(cp.asarray(rows, dtype=cp.int64))
    U = rows.shape[0]
    D = p.size // p.shape[0] if p.shape[0] else 0
    if U == 0 or D == 0:
        return
    g_rows = f32(g_rows)
    kernel("adam_update_rows")(grid(U * D), (THREADS,),
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
    cp = cupy()
    x, g, b = f32(x), f32(g), f32(b)
    C = x.shape[-1]
    rows = x.size // C if C else 0
    y = cp.empty_like(x)
    mean = cp.empty(rows, dtype=cp.float32)
    rstd = cp.empty(rows, dtype=cp.float32)
    if rows:
        wpb = THREADS // 32
        kernel("layernorm_forward")(grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                                     (x, g, b, y, mean, rstd, np.int64(rows), np.int32(C),
                                      np.float32(eps)))
    return y, LNCache(x, mean, rstd, g)


def layernorm_backward(dy, cache):
    """(dx, dg, db). cache: an LNCache, or the NumPy twin's (xhat, rstd, g)."""
    cp = cupy()
    if isinstance(cache, LNCache):
        x, mean, rstd, g = cache
        x_is_xhat = 0
    else:
        x, rstd, g = cache                 # the NumPy twin's cache: x holds xhat
        mean, x_is_xhat = None, 1
    dy, x, rstd, g = f32(dy), f32(x), f32(rstd), f32(g)
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
    blocks = max(1, min(-(-rows // wpb), 4 * sm_count()))
    partial = cp.empty((blocks, 2, C), dtype=cp.float32)
    kernel("layernorm_backward")((blocks,), (32 * wpb,),
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
    cp = cupy()
    x = f32(x)
    y = cp.empty_like(x)
    n = x.size
    if n:
        kernel("gelu_forward")(grid(n), (THREADS,), (x, y, np.int64(n)))
    return y, (x, None)


def gelu_backward(dy, cache):
    """dx = dy * gelu'(x). cache: (x, None) from here or the twin's (x, t)."""
    cp = cupy()
    x = f32(cache[0])
    dy = f32(dy)
    dx = cp.empty_like(x)
    n = x.size
    if n:
        kernel("gelu_backward")(grid(n), (THREADS,), (dy, x, dx, np.int64(n)))
    return dx


# ---------------------------------------------------------------------------
# softmax over the last dim with a key mask   (twins: layers.softmax_forward / _backward)
# ---------------------------------------------------------------------------
def _mask_rows(mask, shape):
    """(mask2d uint8 (R, T), rows_per_mask): score row r uses mask row r // rows_per_mask.

    A mask that varies only over the leading dims and the last one, like a key
    mask (N, 1, 1, T) for scores (N, H, T, T), is used as it is; any other
    broadcastable mask is materialised to the scores' shape."""
    cp = cupy()
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
    cp = cupy()
    z = f32(z)
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
    kernel("softmax_forward")(grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                               (z, m2, np.int32(has), np.int64(per), p, np.int64(rows),
                                np.int32(T)))
    return p, (p,)


def softmax_backward(dp, cache):
    """dz = p * (dp - sum(dp * p)) over the last dim."""
    cp = cupy()
    (p,) = cache
    p, dp = f32(p), f32(dp)
    T = p.shape[-1]
    rows = p.size // T if T else 0
    dz = cp.empty_like(p)
    if rows:
        wpb = THREADS // 32
        kernel("softmax_backward")(grid(rows, wpb, cap=2 ** 31 - 1), (THREADS,),
                                    (dp, p, dz, np.int64(rows), np.int32(T)))
    return dz


# ---------------------------------------------------------------------------
# InfoNCE rows   (twin: loss.infonce_rows)
# ---------------------------------------------------------------------------
def infonce_rows(s):
    """(g, loss, hit) of the similarity matrix s (R, C), target = the diagonal:
    g = softmax(s) - I (R, C), per-row cross-entropy loss (R,), and hit (R,)
    bool: whether row i's largest entry is s_ii. One kernel."""
    cp = cupy()
    s = f32(s)
    R, C = s.shape
    g = cp.empty_like(s)
    loss = cp.empty(R, dtype=cp.float32)
    hit = cp.empty(R, dtype=cp.bool_)
    if R:
        kernel("infonce_rows")((R,), row_block(C), (s, np.int32(C), g, loss, hit))
    return g, loss, hit


# ---------------------------------------------------------------------------
# the twins of the reference functions on CuPy arrays (minembed/fast/__init__.py registers them)
# ---------------------------------------------------------------------------
def dropout_mask(x, p, rng):
    """The keep mask drawn on the GPU by a Philox generator seeded from rng (a host mask costs
    more than the step to copy): a function of rng's state, but not the CPU's mask."""
    cp = cupy()
    gen = cp.random.RandomState(int(rng.integers(2 ** 63)),
                                method=cp.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
    return gen.random_sample(x.shape, dtype=np.float32) >= p


def _bag_backward(dout, cache):
    return RowGrad(*embedding_bag_backward(dout, cache))


def _or_reference(reference, wrapper, fits):
    """The wrapper where ``fits(*args)`` (and kernels are enabled), else the reference."""
    def run(*args, **kwargs):
        return (wrapper if enabled() and fits(*args) else reference.reference)(*args, **kwargs)
    return run


def _first(a, *rest):
    return use_kernels(a)


TWINS = {
    bag.embedding_bag_forward: _or_reference(bag.embedding_bag_forward,
                                             embedding_bag_forward, _first),
    bag.embedding_bag_backward: _or_reference(
        bag.embedding_bag_backward, _bag_backward, lambda dout, cache: isinstance(cache, BagCache)),
    optim.adam_update: _or_reference(optim.adam_update, adam_update,
                                     lambda p, g, m, v, *rest: use_kernels(p, g, m, v)),
    optim.adam_update_rows: _or_reference(optim.adam_update_rows, adam_update_rows,
                                          lambda p, rows, g, m, v, *rest: use_kernels(p, g, m, v)),
    layers.layernorm_forward: _or_reference(layers.layernorm_forward, layernorm_forward,
                                            lambda x, g, b, *rest: use_kernels(x, g, b)),
    layers.layernorm_backward: _or_reference(layers.layernorm_backward, layernorm_backward, _first),
    layers.gelu_forward: _or_reference(layers.gelu_forward, gelu_forward, _first),
    layers.gelu_backward: _or_reference(layers.gelu_backward, gelu_backward, _first),
    layers.softmax_forward: _or_reference(layers.softmax_forward, softmax_forward, _first),
    layers.softmax_backward: _or_reference(layers.softmax_backward, softmax_backward,
                                           lambda dp, cache: use_kernels(dp, cache[0])),
    loss.infonce_rows: _or_reference(loss.infonce_rows, infonce_rows, _first),
    layers.dropout_mask: dropout_mask,
}
