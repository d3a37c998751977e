"""Adam / AdamW (with a lazy, row-wise variant for embedding tables), the
learning-rate schedule and gradient clipping. For p with gradient g at step t:

    p <- p - lr * wd * p                 decoupled weight decay (AdamW; wd = 0: Adam)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    p <- p - lr * m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

An embedding table's gradient is a ``RowGrad`` (the rows a batch used). *Dense* Adam takes
the other rows' gradient as zero, so all V rows move (PyTorch's Adam); *lazy* Adam (PyTorch's
SparseAdam) updates the touched rows only: O(rows used) instead of O(V).
"""
import math

from ..fast import cuda
from .backend import row_blocks, to_numpy, xp_of
from .layers import RowGrad


def adam_init(params):
    """Optimiser state: step count and zeroed moments for every parameter."""
    xp = xp_of(*params.values())
    return {"step": 0, "m": {k: xp.zeros_like(p) for k, p in params.items()},
            "v": {k: xp.zeros_like(p) for k, p in params.items()}}


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One dense AdamW update of p, m and v in place. g is shaped like p, or a RowGrad (zero
    outside g.rows, where m and v only decay: densify(g)'s numbers without a dense gradient)."""
    if cuda.use_kernels(p, g, m, v):  # on a GPU: one fused kernel
        return cuda.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    if not isinstance(g, RowGrad):
        return adam_update_rows(p, None, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    m *= beta1                             # the moments of every row decay ...
    m[g.rows] += (1.0 - beta1) * g.values  # ... and g's rows (distinct) get g: gather, add, scatter
    v *= beta2
    v[g.rows] += (1.0 - beta2) * (g.values * g.values)
    adam_update_rows(p, None, None, m, v, step, lr, beta1, beta2, eps, weight_decay)


def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """Lazy AdamW: the dense formula on p[rows], m[rows], v[rows] only (rows distinct, as a
    RowGrad's; None: all; g_rows None: m, v updated already). A block of rows at a time (gather,
    update in cache, scatter back): memory sees p, m, v, g read and p, m, v written once."""
    if rows is not None and cuda.use_kernels(p, g_rows, m, v):  # on a GPU: one fused kernel
        return cuda.adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1, beta2, eps, weight_decay)
    xp = xp_of(p)
    # p -= lr_t * m / (sqrt(v) + eps_t) is the same update as with m_hat, v_hat:
    # lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps_t = eps sqrt(1 - b2^t).
    c2 = math.sqrt(1.0 - beta2 ** step)
    lr_t, eps_t = lr * c2 / (1.0 - beta1 ** step), eps * c2
    g, src = g_rows, p if rows is None else g_rows         # the blocks cut p's rows or g's
    blocks = row_blocks(src)
    buf = xp.empty((blocks[0].stop if blocks else 0,) + p.shape[1:], p.dtype)
    for b in blocks:
        t, r = buf[:len(src[b])], b if rows is None else rows[b]
        pb, mb, vb = p[r], m[r], v[r]  # rows None: views, updated in place; else copies, put back
        if weight_decay:
            pb *= 1.0 - lr * weight_decay
        if g is not None:
            gb = g[b]
            mb *= beta1
            mb += xp.multiply(gb, 1.0 - beta1, out=t)      # m = b1 m + (1 - b1) g
            vb *= beta2
            xp.multiply(gb, gb, out=t)
            t *= 1.0 - beta2
            vb += t                                        # v = b2 v + (1 - b2) g^2
        xp.sqrt(vb, out=t)
        t += eps_t
        xp.divide(mb, t, out=t)
        t *= lr_t
        pb -= t                                            # p -= lr_t m / (sqrt(v) + eps_t)
        if rows is not None:
            p[r], m[r], v[r] = pb, mb, vb


def adam_step(params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, lazy=True):
    """Update every parameter from its gradient; ``lazy``: RowGrads update their rows only."""
    t = state["step"] = state["step"] + 1
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        if isinstance(g, RowGrad) and lazy:
            adam_update_rows(p, g.rows, g.values, m, v, t, lr, beta1, beta2, eps, weight_decay)
        else:
            adam_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)


def densify(g, shape):
    """A RowGrad as a full (V, D) array with zeros in the untouched rows."""
    dense = xp_of(g.values).zeros(shape, dtype=g.values.dtype)
    dense[g.rows] = g.values
    return dense


def grad_norm(grads):
    """Global L2 norm over all gradients (RowGrads count their rows only)."""
    sums = [(v * v).sum() for v in (g.values if isinstance(g, RowGrad) else g for g in grads.values())]
    # one copy from a GPU, not one per array; summed in float64, in order
    return math.sqrt(sum(map(float, to_numpy(xp_of(*sums).stack(sums))))) if sums else 0.0


def clip_grads(grads, max_norm):
    """Scale all gradients by max_norm / norm when the global norm exceeds it; the norm before."""
    norm = grad_norm(grads)
    if max_norm and norm > max_norm:
        c = max_norm / (norm + 1e-12)
        for g in grads.values():
            (g.values if isinstance(g, RowGrad) else g)[...] *= c
    return norm


def lr_at(step, total_steps, warmup_steps, lr):
    """Linear warm-up from 0 to lr over warmup_steps, then linear decay to 0 at total_steps.
    step counts from 1 (the step about to be taken)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    return lr * max(0.0, (total_steps - step + 1) / max(1, total_steps - warmup_steps))  # remaining / span
