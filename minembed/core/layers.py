"""Layers as pairs of plain functions, side by side: ``x_forward(...) -> (out, cache)`` (the cache
holds exactly what the backward needs) and ``x_backward(dout, cache)``, which returns the
gradients of the forward's inputs in their order (docs/DESIGN.md). Arrays may be NumPy or CuPy:
each function takes its module from its inputs.

Token rows are *packed*: a ragged batch of N views with M real tokens is an (M, C) array, no
padding; position-wise layers (linear, LayerNorm, GELU, dropout) never see padding. Only
attention needs a rectangle: ``pad_forward`` scatters the rows into (N, T, C) grids, with a key
mask (N, T), True on real tokens. Dropout masks are a function of a NumPy Generator's state.
"""
import math
from typing import NamedTuple

import numpy as np

from .backend import twin, xp_of


class RowGrad(NamedTuple):
    """Gradient of an embedding table that touches only some rows: rows (U,) int, the
    distinct rows a batch used (sorted); values (U, D), their gradient (other rows': zero)."""
    rows: object
    values: object


def densify(g, shape):
    """A RowGrad as a full (V, D) array with zeros in the untouched rows."""
    dense = xp_of(g.values).zeros(shape, dtype=g.values.dtype)
    dense[g.rows] = g.values
    return dense


# linear: y = x @ w + b          x (..., I), w (I, O), b (O,)  ->  y (..., O)
def linear_forward(x, w, b):
    y = x @ w
    y += b
    return y, (x, w)


def linear_backward(dy, cache):
    # dx = dy @ w^T ; dw = sum over rows of x^T dy ; db = sum over rows of dy
    x, w = cache
    xp = xp_of(dy)
    dx = dy @ w.T
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dw = x2.T @ dy2  # a transposed view costs nothing in BLAS
    # db as ones @ dy (a GEMV), not dy2.sum(axis=0): 0.04 ms against 0.95 ms on a GPU
    # (49k x 256, H200); as fast or faster on a CPU, and more accurate (blocked sums).
    db = (xp.ones((1, dy2.shape[0]), dy2.dtype) @ dy2)[0]
    return dx, dw, db


# LayerNorm over the last dim:   xhat = (x - mean) * rstd,  y = xhat * g + b
#   rstd = 1 / sqrt(var + eps), var the biased variance (divide by C)
LN_EPS = 1e-5


@twin
def layernorm_forward(x, g, b, eps=LN_EPS):
    xp = xp_of(x)
    xc = x - x.mean(axis=-1, keepdims=True)                     # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)                # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = xc
    xhat *= rstd                                                # in place: xc is ours
    y = xhat * g
    y += b
    return y, (xhat, rstd, g)


@twin
def layernorm_backward(dy, cache):
    # With dxhat = dy * g, the mean and the variance both depend on x, giving
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    # (means over the last dim); dg = sum(dy * xhat), db = sum(dy) over rows.
    xhat, rstd, g = cache
    C = xhat.shape[-1]
    dg = (dy * xhat).reshape(-1, C).sum(axis=0)
    db = dy.reshape(-1, C).sum(axis=0)
    dxhat = dy * g
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dg, db


# GELU, tanh approximation (GPT-2; the fast twins must use the same formula):
#   y = 0.5 x (1 + t),  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3)
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


@twin
def gelu_forward(x):
    t = xp_of(x).tanh(GELU_C * (x + GELU_A * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


@twin
def gelu_backward(dy, cache):
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,   du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    x, t = cache
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x))


# softmax over the last dim with a key mask (True = key may be attended to). Masked keys get
# probability exactly 0; a row whose keys are all masked gets all zeros (not NaN).
@twin
def softmax_forward(z, mask=None):
    xp = xp_of(z)
    if mask is None:
        e = z - z.max(axis=-1, keepdims=True)
    else:
        e = xp.where(mask, z, -xp.inf)                    # exp(-inf) = 0
        zmax = e.max(axis=-1, keepdims=True)
        zmax[~xp.isfinite(zmax)] = 0.0                    # fully masked row
        e -= zmax
    xp.exp(e, out=e)
    s = e.sum(axis=-1, keepdims=True)
    s[s == 0] = 1.0                                       # 0 / 1 = 0, no NaN
    e /= s
    return e, (e,)


@twin
def softmax_backward(dp, cache):
    # p_j = e_j / sum_k e_k  =>  dz_j = p_j (dp_j - sum_k dp_k p_k);
    # masked keys have p_j = 0 so they get dz_j = 0 exactly.
    (p,) = cache
    dz = dp * p
    dz -= p * dz.sum(axis=-1, keepdims=True)
    return dz


# dropout (inverted): y = x * keep / (1 - p), keep ~ Bernoulli(1 - p)
@twin
def dropout_mask(x, p, rng):
    """A keep mask shaped like x (True with probability 1 - p), a function of the NumPy Generator
    ``rng``'s state: float32 uniforms from rng (on a GPU its twin draws them there instead)."""
    return xp_of(x).asarray(rng.random(x.shape, dtype=np.float32) >= p)


def dropout_forward(x, p, rng=None):
    """Identity (cache None) when p == 0 or rng is None (evaluation)."""
    if p == 0.0 or rng is None:
        return x, None
    keep = dropout_mask(x, p, rng)
    y = x * keep
    y *= 1.0 / (1.0 - p)
    return y, (keep, p)


def dropout_backward(dy, cache):
    # dx = dy * keep / (1 - p)
    if cache is None:
        return dy
    keep, p = cache
    dx = dy * keep
    dx *= 1.0 / (1.0 - p)
    return dx


# pad / unpad: packed rows (M, C) <-> grid (N, T, C)
#   index (M,) = view * T + position, unique, the flat cell of each packed row
def pad_forward(x, index, N, T):
    xp = xp_of(x)
    grid = xp.zeros((N * T,) + x.shape[1:], dtype=x.dtype)
    grid[index] = x
    return grid.reshape((N, T) + x.shape[1:]), (index,)


def pad_backward(dgrid, cache):
    (index,) = cache
    N, T = dgrid.shape[:2]
    return dgrid.reshape((N * T,) + dgrid.shape[2:])[index]   # padding cells drop out


def unpad_forward(grid, index):
    N, T = grid.shape[:2]
    return grid.reshape((N * T,) + grid.shape[2:])[index], (index, N, T)


def unpad_backward(dx, cache):
    index, N, T = cache
    return pad_forward(dx, index, N, T)[0]                  # zeros on padding cells


# multi-head self-attention on packed rows
#   x (M, D) packed rows; grids: a list of (index, key_mask), one per run of consecutive views
#   padded to a common length T_b (a length bucket), in row order: index (M_b,) the grid cell
#   of each row, key_mask (N_b, T_b) bool.
#   qkv = x @ w_qkv + b_qkv                      (M, 3D), columns [q | k | v]
#   per view and head: a = softmax(q k^T / sqrt(Dh), masked keys) ;  a' = drop(a)
#                      ctx = a' v                 (T, Dh)
#   y = concat_heads(ctx) @ w_out + b_out        (M, D)
# The projections run once on all M rows (large matmuls); only the core (scores, softmax,
# a' v) runs per grid, on (N_b * H) small matmuls.
@twin
def attention_core_forward(qkv, index, key_mask, heads, p_drop=0.0, rng=None):
    """qkv (M_b, 3D) packed rows of one grid -> ctx (M_b, D)."""
    xp = xp_of(qkv)
    N, T = key_mask.shape
    D = qkv.shape[-1] // 3
    H, Dh = heads, D // heads
    scale = 1.0 / math.sqrt(Dh)
    qkv_grid, c_pad = pad_forward(qkv, index, N, T)              # (N, T, 3D)
    # Per view and head, contiguous blocks: q, v (N, H, T, Dh) and k stored transposed, kT
    # (N, H, Dh, T); q @ kT on contiguous blocks is ~2x faster than on strided views of the grid.
    g = qkv_grid.reshape(N, T, 3, H, Dh)
    q = xp.ascontiguousarray(g[:, :, 0].transpose(0, 2, 1, 3))
    kT = xp.ascontiguousarray(g[:, :, 1].transpose(0, 2, 3, 1))
    v = xp.ascontiguousarray(g[:, :, 2].transpose(0, 2, 1, 3))
    s = q @ kT                                                   # (N, H, T, T)
    s *= scale
    a, c_sm = softmax_forward(s, key_mask[:, None, None, :])
    a_d, c_drop = dropout_forward(a, p_drop, rng)
    ctx = xp.empty((N, T, H, Dh), dtype=qkv.dtype)
    xp.matmul(a_d, v, out=ctx.transpose(0, 2, 1, 3))             # heads side by side
    ctx, c_unpad = unpad_forward(ctx.reshape(N, T, D), index)    # (M_b, D)
    return ctx, (c_pad, q, kT, v, scale, c_sm, c_drop, c_unpad)


@twin
def attention_core_backward(dctx, cache):
    c_pad, q, kT, v, scale, c_sm, c_drop, c_unpad = cache
    xp = xp_of(dctx)
    N, H, T, Dh = q.shape
    dctx = unpad_backward(dctx, c_unpad)                         # (N, T, D)
    dctx = dctx.reshape(N, T, H, Dh).transpose(0, 2, 1, 3)       # (N, H, T, Dh) view
    dqkv = xp.empty((N, T, 3, H, Dh), dtype=dctx.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                   # views into dqkv
    # recompute a' = a * keep / (1 - p) (the same product as dropout's backward)
    a_d = c_sm[0] if c_drop is None else dropout_backward(c_sm[0], c_drop)
    xp.matmul(a_d.swapaxes(-1, -2), dctx, out=dv)                # dv = a'^T dctx
    da = dctx @ v.swapaxes(-1, -2)                               # da' = dctx v^T
    ds = softmax_backward(dropout_backward(da, c_drop), c_sm)
    ds *= scale                                                  # s = scale q k^T
    xp.matmul(ds, kT.swapaxes(-1, -2), out=dq)                   # dq = ds k
    xp.matmul(ds.swapaxes(-1, -2), q, out=dk)                    # dk = ds^T q
    return pad_backward(dqkv.reshape(N, T, 3 * H * Dh), c_pad)   # (M_b, 3D)


def attention_forward(x, grids, w_qkv, b_qkv, w_out, b_out, heads, p_drop=0.0, rng=None):
    xp = xp_of(x)
    qkv, c_qkv = linear_forward(x, w_qkv, b_qkv)                 # (M, 3D)
    ctx, c_core, start = [], [], 0
    for index, key_mask in grids:
        stop = start + len(index)
        c, cache = attention_core_forward(qkv[start:stop], index, key_mask, heads, p_drop, rng)
        ctx.append(c)
        c_core.append((stop - start, cache))
        start = stop
    del qkv
    ctx = ctx[0] if len(ctx) == 1 else xp.concatenate(ctx)      # (M, D)
    y, c_out = linear_forward(ctx, w_out, b_out)
    return y, (c_qkv, c_core, c_out)


def attention_backward(dy, cache):
    c_qkv, c_core, c_out = cache
    xp = xp_of(dy)
    dctx, dw_out, db_out = linear_backward(dy, c_out)            # (M, D)
    dqkv, start = [], 0
    for rows, c in c_core:                                       # each grid's rows, in order
        dqkv.append(attention_core_backward(dctx[start:start + rows], c))
        start += rows
    dqkv = dqkv[0] if len(dqkv) == 1 else xp.concatenate(dqkv)  # (M, 3D)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, c_qkv)
    return dx, dw_qkv, db_qkv, dw_out, db_out
