"""L2 normalisation, cosine similarity and the InfoNCE loss, forward and backward.

InfoNCE with in-batch negatives: for B pairs (a_i, p_i),

    S_ij = scale * cos(a_i, p_j)                  (B, B), scale = 1/temperature
    loss = mean_i [ logsumexp_j S_ij - S_ii ]     cross-entropy, target = the diagonal

With P = softmax over each row of S, dloss/dS = (P - I) / B. The symmetric
variant (CLIP) averages this with the loss over the columns, gradient (Q - I) / B.
Matryoshka (Kusupati et al. 2022) trains every prefix in a list of dims K too:

    loss = mean_{k in K} InfoNCE(a[:, :k], p[:, :k]);  da[:, :k] += dInfoNCE_k/da_k / |K|

(the mean keeps the loss on one InfoNCE's scale: the tuned learning rates fit).
"""
from .backend import to_numpy, twin, xp_of


def l2_normalize_forward(x, eps=1e-12):
    """n = x / ||x|| row-wise. x: (N, D)."""
    xp = xp_of(x)
    norm = xp.maximum(xp.sqrt((x * x).sum(axis=1, keepdims=True)), eps)  # (N, 1); 0 stays 0, no NaN
    n = x / norm
    return n, (n, norm)


def l2_normalize_backward(dn, cache):
    """dx = (dn - n (n . dn)) / ||x||: the part of dn along n is removed (moving x along itself
    keeps n)."""
    n, norm = cache
    return (dn - n * (dn * n).sum(axis=1, keepdims=True)) / norm


@twin
def infonce_rows(s):
    """Cross-entropy of each row of s (R, C) with target the diagonal entry: g = softmax(s) - I
    (d loss_i / d s_ij, R x C), the per-row losses loss_i = logsumexp_j s_ij - s_ii (R,), and
    hit_i = [argmax_j s_ij == i]. Subtracting the row max first means exp never overflows."""
    xp = xp_of(s)
    diag = xp.arange(s.shape[0])
    m = s.max(axis=1, keepdims=True)
    g = s - m
    xp.exp(g, out=g)                                 # exp(s - m)
    z = g.sum(axis=1, keepdims=True)
    g /= z                                           # P, the row softmax
    loss = m[:, 0] + xp.log(z[:, 0]) - s[diag, diag]
    hit = s.argmax(axis=1) == diag
    g[diag, diag] -= 1.0                             # P - I
    return g, loss, hit


def infonce_forward(a, p, scale=20.0, symmetric=False):
    """InfoNCE of anchors a (B, D) against positives p (B, D), in-batch negatives: (loss,
    accuracy, cache). accuracy: the fraction of anchors whose most similar positive is their own
    (an output beside the loss, not differentiated); cache["g"]: dloss/dS times B."""
    xp = xp_of(a)
    an, a_cache = l2_normalize_forward(a)
    pn, p_cache = l2_normalize_forward(p)
    s = (scale * an) @ pn.T               # (B, B); the scale on the (B, D) side: one pass less
    g, loss_rows, hit = infonce_rows(s)
    loss = loss_rows.mean()
    if symmetric:                         # the same over the columns: rows of S^T
        g_cols, loss_cols, _ = infonce_rows(xp.ascontiguousarray(s.T))
        loss = 0.5 * (loss + loss_cols.mean())
        g += g_cols.T
        g *= 0.5
    # one copy to the host for both numbers (on a GPU, one wait instead of two)
    loss, accuracy = (float(v) for v in to_numpy(xp.stack([loss, hit.mean(dtype=loss.dtype)])))
    return loss, accuracy, dict(an=an, pn=pn, a_cache=a_cache, p_cache=p_cache, scale=scale, g=g)


def infonce_backward(dloss, cache):
    """Gradients (da, dp) of the loss with respect to the anchors and positives."""
    an, pn, g = cache["an"], cache["pn"], cache["g"]
    # dS = g * dloss / B;  S = scale an pn^T  =>  d an = scale dS pn,  d pn = scale dS^T an
    c = cache["scale"] * dloss / an.shape[0]
    da = l2_normalize_backward(c * (g @ pn), cache["a_cache"])
    dp = l2_normalize_backward(c * (g.T @ an), cache["p_cache"])
    return da.astype(an.dtype, copy=False), dp.astype(pn.dtype, copy=False)


def matryoshka_forward(a, p, dims, scale=20.0, symmetric=False):
    """The mean over k in ``dims`` (ascending, the last = a.shape[1]) of InfoNCE on the
    first k dimensions: (loss, accuracy of the full vectors, cache)."""
    parts = [infonce_forward(a[:, :k], p[:, :k], scale, symmetric) for k in dims]
    loss = sum(part[0] for part in parts) / len(dims)
    return loss, parts[-1][1], dict(dims=dims, caches=[c for _, _, c in parts], shape=a.shape)


def matryoshka_backward(dloss, cache):
    """(da, dp): each prefix's InfoNCE gradient, added into its first k columns."""
    xp, dims = xp_of(cache["caches"][0]["an"]), cache["dims"]
    da, dp = (xp.zeros(cache["shape"], dtype=cache["caches"][0]["an"].dtype) for _ in "ap")
    for k, c in zip(dims, cache["caches"]):
        dak, dpk = infonce_backward(dloss / len(dims), c)
        da[:, :k] += dak
        dp[:, :k] += dpk
    return da, dp


def contrastive_loss(emb, scale, symmetric=False, dims=None):
    """The training loss of 2B views, anchors emb[:B] then their positives emb[B:]: InfoNCE, or
    with ``dims`` its Matryoshka mean over those prefixes. (loss, accuracy, demb), demb (2B, D)
    = d loss / d emb, what the encoder's backward takes."""
    b = emb.shape[0] // 2
    loss, accuracy, cache = matryoshka_forward(emb[:b], emb[b:], dims or [emb.shape[1]],
                                               scale, symmetric)
    return loss, accuracy, xp_of(emb).concatenate(matryoshka_backward(1.0, cache))
