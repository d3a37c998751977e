"""Fast twins for NumPy arrays: the reference's maths arranged for a CPU's caches and BLAS.

* The bag layer as scipy's CSR sparse-matrix products (out = A @ table, d table = A^T @ dout):
  far faster than ``np.add.at``, and the forward never looks for the distinct rows.
* GELU and Adam as chains of in-place passes run a block of rows at a time (``row_blocks``): the
  block stays in the L2 cache while every pass runs over it, so memory is read and written once,
  not once a pass.
* Attention's core a view at a time: its scores, softmax, dropout and a' v stay in cache (the
  backward ran 1.5x faster than on all views at once).

Each has its reference's signature and results to float32 rounding (tests/test_fast.py).
"""
import math

import numpy as np
import scipy.sparse

from ..core import bag, layers, optim
from ..core.layers import GELU_A, GELU_C, RowGrad

BLOCK = 1 << 16  # numbers a block (256 KB of float32: a few such stay in the L2 cache)


def row_blocks(a):
    """Slices of a's first axis, about BLOCK numbers each."""
    k = max(1, BLOCK // max(1, a[:1].size))
    return [slice(s, s + k) for s in range(0, a.shape[0], k)]


# -- the bag layer -------------------------------------------------------------------------------

def embedding_bag_forward(table, ids, offsets):
    ids, offsets = np.asarray(ids), np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    w = np.repeat((1.0 / np.maximum(lengths, 1)).astype(table.dtype), lengths)  # (M,) 1/len(view)
    # (N, V)
    A = scipy.sparse.csr_matrix((w, ids, offsets), shape=(len(offsets) - 1, table.shape[0]))
    return np.asarray(A @ table), (ids, offsets, w, table.shape[0])


def sublinear_bag_forward(table, ids, offsets):
    A = scipy.sparse.csr_matrix((np.ones(len(ids), table.dtype), np.asarray(ids),
                                 np.asarray(offsets)),
                                shape=(len(offsets) - 1, table.shape[0]), copy=True)
    A.sum_duplicates()                # one entry per distinct token of a view: its count n
    A.data = 1 + np.log(A.data)
    A = (scipy.sparse.diags(1 / np.maximum(np.asarray(A.sum(axis=1)).ravel(), 1))
         @ A).astype(table.dtype)
    return np.asarray(A @ table), (A.indices, A.indptr, A.data, table.shape[0])


def embedding_bag_backward(dout, cache):
    ids, offsets, w, vocab = cache
    # the sorted distinct ids and each occurrence's place among them, without sorting: a (V,) mask
    seen = np.zeros(vocab, dtype=bool)
    seen[ids] = True
    rows = np.flatnonzero(seen)                # (U,)
    inv = (np.cumsum(seen) - 1)[ids]           # (M,)
    A = scipy.sparse.csr_matrix((w, inv, offsets), shape=(len(offsets) - 1, len(rows)))  # (N, U)
    return RowGrad(rows, np.asarray(A.T.tocsr() @ dout))  # as CSR: rows written in order


# -- GELU, a block at a time ---------------------------------------------------------------------

def gelu_forward(x):
    t, y = np.empty_like(x), np.empty_like(x)
    x2, t2, y2 = (a.reshape(-1, x.shape[-1]) for a in (x, t, y))
    for b in row_blocks(x2):
        xb, u, yb = x2[b], t2[b], y2[b]
        np.multiply(xb, xb, out=u)
        u *= GELU_A * GELU_C
        u += GELU_C
        u *= xb                          # u = c (x + a x^3)
        np.tanh(u, out=u)                # t = tanh(u)
        np.add(u, 1.0, out=yb)
        yb *= xb
        yb *= 0.5
    return y, (x, t)


def gelu_backward(dy, cache):
    x, t = cache
    d = np.empty_like(x)
    x2, t2, d2, dy2 = (a.reshape(-1, x.shape[-1]) for a in (x, t, d, dy))
    for b in row_blocks(x2):
        tb, xb, db = t2[b], x2[b], d2[b]
        sb = tb * tb
        sb -= 1.0                        # -(1 - t^2)
        np.multiply(xb, xb, out=db)
        db *= -3.0 * GELU_A * GELU_C
        db -= GELU_C                     # -du/dx
        db *= sb
        db *= xb                         # x (1 - t^2) du/dx
        db += tb
        db += 1.0
        db *= 0.5
        db *= dy2[b]
    return d


# -- Adam, a block of rows at a time -------------------------------------------------------------

def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    if not isinstance(g, RowGrad):
        return adam_update_rows(p, None, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    m *= beta1                             # the moments of every row decay ...
    m[g.rows] += (1.0 - beta1) * g.values  # ... and g's rows (distinct) get g: gather, add, scatter
    v *= beta2
    v[g.rows] += (1.0 - beta2) * (g.values * g.values)
    adam_update_rows(p, None, None, m, v, step, lr, beta1, beta2, eps, weight_decay)


def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
    """rows None: every row; g_rows None: m and v are updated already. A block of rows at a time
    (gather, update in cache, scatter back): p, m, v, g read and p, m, v written once."""
    # p -= lr_t m / (sqrt(v) + eps_t) is the update with m_hat, v_hat:
    # lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps_t = eps sqrt(1 - b2^t).
    c2 = math.sqrt(1.0 - beta2 ** step)
    lr_t, eps_t = lr * c2 / (1.0 - beta1 ** step), eps * c2
    g, src = g_rows, p if rows is None else g_rows         # the blocks cut p's rows or g's
    blocks = row_blocks(src)
    buf = np.empty((blocks[0].stop if blocks else 0,) + p.shape[1:], p.dtype)
    for b in blocks:
        t, r = buf[:len(src[b])], b if rows is None else rows[b]
        pb, mb, vb = p[r], m[r], v[r]  # rows None: views, updated in place; else copies, put back
        if weight_decay:
            pb *= 1.0 - lr * weight_decay
        if g is not None:
            gb = g[b]
            mb *= beta1
            mb += np.multiply(gb, 1.0 - beta1, out=t)      # m = b1 m + (1 - b1) g
            vb *= beta2
            np.multiply(gb, gb, out=t)
            t *= 1.0 - beta2
            vb += t                                        # v = b2 v + (1 - b2) g^2
        np.sqrt(vb, out=t)
        t += eps_t
        np.divide(mb, t, out=t)
        t *= lr_t
        pb -= t                                            # p -= lr_t m / (sqrt(v) + eps_t)
        if rows is not None:
            p[r], m[r], v[r] = pb, mb, vb


# -- attention's core, a view at a time ----------------------------------------------------------

def attention_core_forward(qkv, index, key_mask, heads, p_drop=0.0, rng=None):
    T = key_mask.shape[1]
    ends = np.cumsum(key_mask.sum(axis=1))                 # a view's rows are consecutive
    ctx, caches = [], []
    for n, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
        c, cache = layers.attention_core_forward.reference(
            qkv[a:b], index[a:b] - n * T, key_mask[n:n + 1], heads, p_drop, rng)
        ctx.append(c)
        caches.append((b - a, cache))
    return np.concatenate(ctx), caches


def attention_core_backward(dctx, caches):
    out, start = [], 0
    for rows, cache in caches:
        out.append(layers.attention_core_backward.reference(dctx[start:start + rows], cache))
        start += rows
    return np.concatenate(out)


TWINS = {bag.embedding_bag_forward: embedding_bag_forward,
         bag.embedding_bag_backward: embedding_bag_backward,
         bag.sublinear_bag_forward: sublinear_bag_forward,
         layers.gelu_forward: gelu_forward, layers.gelu_backward: gelu_backward,
         layers.attention_core_forward: attention_core_forward,
         layers.attention_core_backward: attention_core_backward,
         optim.adam_update: adam_update, optim.adam_update_rows: adam_update_rows}
