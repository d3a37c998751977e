"""L2 normalisation, cosine similarity and the InfoNCE loss, forward and backward.

InfoNCE with in-batch negatives: for B pairs (a_i, p_i),

    S_ij = scale * cos(a_i, p_j)                  (B, B), scale = 1/temperature
    loss = mean_i [ logsumexp_j S_ij - S_ii ]     cross-entropy, target = the diagonal

With P = softmax over each row of S, dloss/dS = (P - I) / B. The symmetric
variant (CLIP) averages this with the same loss over the columns
(positives -> anchors), whose gradient is (Q - I) / B with Q = softmax over columns.
"""
from .backend import xp_of


def l2_normalize_forward(x, eps=1e-12):
    """n = x / ||x|| row-wise. x: (N, D)."""
    xp = xp_of(x)
    norm = xp.sqrt((x * x).sum(axis=1, keepdims=True))  # (N, 1)
    norm = xp.maximum(norm, eps)  # a zero row stays zero instead of NaN
    n = x / norm
    return n, (n, norm)


def l2_normalize_backward(dn, cache):
    """dx = (dn - n (n . dn)) / ||x||: the part of dn along n is removed,
    because moving x along itself does not change n."""
    n, norm = cache
    return (dn - n * (dn * n).sum(axis=1, keepdims=True)) / norm


def _log_softmax(s, axis):
    xp = xp_of(s)
    m = s.max(axis=axis, keepdims=True)  # subtract the max: exp never overflows
    z = s - m
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def infonce_forward(a, p, scale=20.0, symmetric=False):
    """InfoNCE loss of anchors a (B, D) against positives p (B, D), in-batch negatives.

    Returns (loss, cache); cache["accuracy"] is the fraction of anchors whose
    most similar positive is their own.
    """
    xp = xp_of(a)
    an, a_cache = l2_normalize_forward(a)
    pn, p_cache = l2_normalize_forward(p)
    s = scale * (an @ pn.T)  # (B, B)
    b = s.shape[0]
    diag = xp.arange(b)
    logp_rows = _log_softmax(s, axis=1)
    loss = -logp_rows[diag, diag].mean()
    logp_cols = None
    if symmetric:
        logp_cols = _log_softmax(s, axis=0)
        loss = 0.5 * (loss - logp_cols[diag, diag].mean())
    accuracy = (s.argmax(axis=1) == diag).mean()
    cache = dict(an=an, pn=pn, a_cache=a_cache, p_cache=p_cache, scale=scale,
                 logp_rows=logp_rows, logp_cols=logp_cols, accuracy=float(accuracy))
    return float(loss), cache


def infonce_backward(cache, dloss=1.0):
    """Gradients (da, db) of the loss with respect to the anchors and positives."""
    an, pn, scale = cache["an"], cache["pn"], cache["scale"]
    xp = xp_of(an)
    b = an.shape[0]
    diag = xp.arange(b)
    ds = xp.exp(cache["logp_rows"])  # P, softmax over rows
    ds[diag, diag] -= 1.0
    if cache["logp_cols"] is not None:
        dq = xp.exp(cache["logp_cols"])  # Q, softmax over columns
        dq[diag, diag] -= 1.0
        ds = 0.5 * (ds + dq)
    ds *= dloss / b  # (B, B) = dloss/dS
    # S = scale * an @ pn.T  =>  d an = scale dS @ pn,  d pn = scale dS.T @ an
    dan = scale * (ds @ pn)
    dpn = scale * (ds.T @ an)
    da = l2_normalize_backward(dan, cache["a_cache"])
    dp = l2_normalize_backward(dpn, cache["p_cache"])
    return da.astype(an.dtype, copy=False), dp.astype(pn.dtype, copy=False)
