"""Adam / AdamW (with a lazy, row-wise variant for embedding tables), the
learning-rate schedule and gradient clipping. For p with gradient g at step t:

    p <- p - lr * wd * p                 decoupled weight decay (AdamW; wd = 0: Adam)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    p <- p - lr * m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

An embedding table's gradient is a ``RowGrad`` (the rows a batch used). *Dense*
Adam takes the other rows' gradient as zero, so all V rows move (PyTorch's Adam
on a dense EmbeddingBag gradient); *lazy* Adam (PyTorch's SparseAdam) updates
the touched rows only: O(rows used) instead of O(V).
"""
import math

from . import cuda
from .backend import to_numpy, xp_of
from .layers import RowGrad


def adam_init(params):
    """Optimiser state: step count and zeroed moments for every parameter."""
    xp = xp_of(*params.values())
    return {"step": 0,
            "m": {k: xp.zeros_like(p) for k, p in params.items()},
            "v": {k: xp.zeros_like(p) for k, p in params.items()}}


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One dense AdamW update of p, in place (m and v too).

    g is a gradient shaped like p, or a RowGrad (zero outside g.rows, where m and v
    only decay): the same numbers as with densify(g), without a dense (V, D) gradient.
    """
    if cuda.use_kernels(p, g, m, v):  # on a GPU: one fused kernel
        return cuda.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    xp = xp_of(p)
    rows, g = (g.rows, g.values) if isinstance(g, RowGrad) else (..., g)
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    m *= beta1
    m[rows] += (1.0 - beta1) * g  # rows are distinct: gather, add, scatter back
    v *= beta2
    v[rows] += (1.0 - beta2) * (g * g)
    _apply(xp, p, m, v, step, lr, beta1, beta2, eps)


def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
    """Lazy AdamW: the dense formula on p[rows], m[rows], v[rows] only (rows distinct,
    as a RowGrad's are): gather, update, scatter back."""
    if cuda.use_kernels(p, g_rows, m, v):  # on a GPU: one fused kernel
        return cuda.adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1, beta2, eps, weight_decay)
    xp = xp_of(p)
    pr, mr, vr = p[rows], m[rows], v[rows]
    if weight_decay:
        pr *= 1.0 - lr * weight_decay
    mr *= beta1
    mr += (1.0 - beta1) * g_rows
    vr *= beta2
    vr += (1.0 - beta2) * (g_rows * g_rows)
    _apply(xp, pr, mr, vr, step, lr, beta1, beta2, eps)
    p[rows], m[rows], v[rows] = pr, mr, vr


def _apply(xp, p, m, v, step, lr, beta1, beta2, eps):
    # p -= lr_t * m / (sqrt(v) + eps_t) is the same update as with m_hat, v_hat:
    # lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps_t = eps sqrt(1 - b2^t).
    # Folding the bias corrections into two scalars saves two passes over memory.
    c2 = math.sqrt(1.0 - beta2 ** step)
    lr_t = lr * c2 / (1.0 - beta1 ** step)
    # One scratch array, updated in place: each line is one pass over memory.
    upd = xp.sqrt(v)
    upd += eps * c2                # sqrt(v) + eps_t
    xp.divide(m, upd, out=upd)     # m / (sqrt(v) + eps_t)
    upd *= lr_t
    p -= upd


def adam_step(params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              lazy=True):
    """Update every parameter from its gradient. ``lazy`` picks the row-wise
    update for RowGrad gradients (otherwise they are applied densely)."""
    state["step"] += 1
    t = state["step"]
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        if isinstance(g, RowGrad):
            if lazy:
                adam_update_rows(p, g.rows, g.values, m, v, t, lr, beta1, beta2, eps, weight_decay)
                continue
        adam_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)


def densify(g, shape):
    """A RowGrad as a full (V, D) array with zeros in the untouched rows."""
    xp = xp_of(g.values)
    dense = xp.zeros(shape, dtype=g.values.dtype)
    dense[g.rows] = g.values
    return dense


def grad_norm(grads):
    """Global L2 norm over all gradients (RowGrads count their rows only)."""
    sums = [(v * v).sum() for v in (g.values if isinstance(g, RowGrad) else g
                                    for g in grads.values())]
    if not sums:
        return 0.0
    total = 0.0
    for s in to_numpy(xp_of(*sums).stack(sums)):  # one copy from a GPU, not one per array
        total += float(s)
    return math.sqrt(total)


def clip_grads(grads, max_norm):
    """Scale all gradients by max_norm / norm when the global norm exceeds it.
    Returns the norm before clipping."""
    norm = grad_norm(grads)
    if max_norm and norm > max_norm:
        c = max_norm / (norm + 1e-12)
        for g in grads.values():
            (g.values if isinstance(g, RowGrad) else g)[...] *= c
    return norm


def lr_at(step, total_steps, warmup_steps, lr):
    """Linear warm-up from 0 to lr over warmup_steps, then linear decay to 0 at
    total_steps. step counts from 1 (the step about to be taken)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    remaining = total_steps - step + 1
    span = max(1, total_steps - warmup_steps)
    return lr * max(0.0, remaining / span)
