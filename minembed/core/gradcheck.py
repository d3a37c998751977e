"""Finite-difference gradient checks, used by every layer test and by the lessons:

    df/dx[i] ~= (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)      (error O(eps^2))

In float64 with eps ~ 1e-6 a correct gradient agrees to ~1e-8 relative; a wrong one is O(1) off.
"""
import numpy as np


def rel_error(a, b):
    """Relative error ||a - b|| / (||a|| + ||b||); 0 when both are zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0.0 else float(np.linalg.norm(a - b) / denom)


def numerical_grad(f, x, eps=1e-6, max_entries=None, rng=None):
    """Central-difference gradient of the scalar ``f()`` with respect to ``x``, which is perturbed
    in place (and restored), so ``f`` should read it. With ``max_entries`` only a random subset
    of entries is probed; the returned array holds NaN elsewhere (compare with ``mask=~isnan``)."""
    grad = np.full(x.shape, np.nan) if max_entries else np.zeros(x.shape)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views: writing flat writes x
    idx = np.arange(flat.size)
    if max_entries and flat.size > max_entries:
        rng = rng or np.random.default_rng(0)
        idx = rng.choice(flat.size, size=max_entries, replace=False)
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        gflat[i] = (fp - f()) / (2 * eps)
        flat[i] = old
    return grad


def check_grads(f, params, grads, eps=1e-6, max_entries=None, seed=0):
    """Relative error of each analytic gradient against finite differences: {name: error}
    (compare with e.g. 1e-6). f: () -> float, the loss computed from the current ``params``
    (name -> float64 array, perturbed in place); grads: name -> the analytic gradient."""
    rng, errors = np.random.default_rng(seed), {}
    for name, x in params.items():
        num = numerical_grad(f, x, eps=eps, max_entries=max_entries, rng=rng)
        mask = ~np.isnan(num)
        errors[name] = rel_error(np.asarray(grads[name], dtype=np.float64)[mask], num[mask])
    return errors
