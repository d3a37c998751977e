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

from .backend import to_numpy, twin, xp_of
from .layers import RowGrad, densify


def adam_init(params):
    """Optimiser state: step count and zeroed moments for every parameter."""
    xp = xp_of(*params.values())
    return {"step": 0, "m": {k: xp.zeros_like(p) for k, p in params.items()},
            "v": {k: xp.zeros_like(p) for k, p in params.items()}}


@twin
def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One dense AdamW update of p, m and v in place (the module docstring's formula). g is
    shaped like p, or a RowGrad (zero outside its rows: there m and v only decay)."""
    if isinstance(g, RowGrad):
        g = densify(g, p.shape)
    p *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    m_hat, v_hat = m / (1.0 - beta1 ** step), v / (1.0 - beta2 ** step)
    p -= lr * m_hat / (xp_of(p).sqrt(v_hat) + eps)


@twin
def adam_update_rows(p, rows, g_rows, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
    """Lazy AdamW: the dense update on the rows ``rows`` (distinct) of p, m and v only, with
    g_rows their gradient: the other rows do not move and their moments do not decay."""
    p_r, m_r, v_r = p[rows], m[rows], v[rows]
    adam_update.reference(p_r, g_rows, m_r, v_r, step, lr, beta1, beta2, eps, weight_decay)
    p[rows], m[rows], v[rows] = p_r, m_r, v_r


def adam_step(params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, lazy=True):
    """Update every parameter from its gradient; ``lazy``: RowGrads update their rows only."""
    t = state["step"] = state["step"] + 1
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        if isinstance(g, RowGrad) and lazy:
            adam_update_rows(p, g.rows, g.values, m, v, t, lr, beta1, beta2, eps, weight_decay)
        else:
            adam_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)


def grad_norm(grads):
    """Global L2 norm over all gradients (RowGrads count their rows only)."""
    sums = [(v * v).sum()
            for v in (g.values if isinstance(g, RowGrad) else g for g in grads.values())]
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
    # remaining / span
    return lr * max(0.0, (total_steps - step + 1) / max(1, total_steps - warmup_steps))
