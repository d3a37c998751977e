"""The bag-of-token-embeddings encoder: a text's vector is the mean of its token vectors (an
``EmbeddingBag(mode="mean")`` written by hand). Batches are *ragged*: one flat id array plus
offsets, no padding.

The layer is a weighted sum of table rows, one weight per token occurrence t of view i:

    forward:   out[i] = sum_t w_t table[ids_t]           (N, D);  the mean: w_t = 1 / len(i)
    backward:  d table[u] = sum_{t: ids_t = u} w_t dout[view_t]   for each row u the batch used

In matrix form out = A @ table with A (N, V) sparse, A[i, u] = the weights of token u in view i,
and d table = A^T @ dout: only the rows the batch used get a gradient (a RowGrad).
"""
import numpy as np

from .backend import twin, xp_of
from .layers import RowGrad


def view_of_tokens(offsets, n_tokens):
    """(M,) the view each token belongs to: view i = tokens offsets[i]:offsets[i+1]."""
    xp = xp_of(offsets)
    return xp.searchsorted(offsets, xp.arange(n_tokens), side="right") - 1


def weighted_bag_forward(table, ids, offsets, w):
    """out[i] = sum over view i's tokens t of w_t table[ids_t]; (out (N, D), cache)."""
    xp = xp_of(table)
    view = view_of_tokens(offsets, len(ids))
    out = xp.zeros((len(offsets) - 1, table.shape[1]), dtype=table.dtype)
    xp.add.at(out, view, w[:, None] * table[ids])
    return out, (ids, offsets, w, table.shape[0])


@twin
def embedding_bag_forward(table, ids, offsets):
    """Mean of each view's token rows. table: (V, D); ids: (M,) int; offsets: (N+1,) int, view
    i = ids[offsets[i]:offsets[i+1]]. Returns out (N, D) in table's dtype (an empty view: zeros)
    and the cache."""
    xp = xp_of(table)
    ids, offsets = xp.asarray(ids), xp.asarray(offsets, dtype=xp.int64)
    lengths = xp.diff(offsets)
    w = (1.0 / xp.maximum(lengths, 1)).astype(table.dtype)          # (N,) 1 / len(view)
    return weighted_bag_forward(table, ids, offsets, w[view_of_tokens(offsets, len(ids))])


@twin
def sublinear_bag_forward(table, ids, offsets):
    """The same with a token n times in a view weighing 1 + log n, not n (TF-IDF's sublinear tf;
    ``--pooling sublinear``, encoding only), a view's weights summing to 1. Same cache."""
    xp = xp_of(table)
    ids, offsets = xp.asarray(ids), xp.asarray(offsets, dtype=xp.int64)
    view = view_of_tokens(offsets, len(ids))
    _, inv, n = xp.unique(view * table.shape[0] + ids, return_inverse=True, return_counts=True)
    n = n[inv.ravel()]                                   # (M,) times this token is in this view
    w = (1.0 + xp.log(n)) / n                            # its n occurrences weigh 1 + log n
    total = xp.zeros(len(offsets) - 1)
    xp.add.at(total, view, w)                            # (N,) a view's weights, summed
    return weighted_bag_forward(table, ids, offsets, (w / total[view]).astype(table.dtype))


@twin
def embedding_bag_backward(dout, cache):
    """Gradient for the rows the batch touched: d table[u] = sum_{t: ids_t = u} w_t dout[view_t]."""
    xp = xp_of(dout)
    ids, offsets, w, _ = cache
    rows, inv = xp.unique(ids, return_inverse=True)      # (U,) the rows used; each token's row
    values = xp.zeros((len(rows), dout.shape[1]), dtype=dout.dtype)
    xp.add.at(values, inv.ravel(), w[:, None] * dout[view_of_tokens(offsets, len(ids))])
    return RowGrad(rows, values)


# the encoder interface (docs/DESIGN.md): the model is just this one layer

def init_params(config, rng):
    """A random table (vocab_size, dim), std 0.02 as in the paper's bare embedding layer."""
    v, d = int(config["vocab_size"]), int(config["dim"])
    table = rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.02)
    return {"tok_emb": table}


def forward(params, ids, offsets, config=None, train=False, rng=None):
    return embedding_bag_forward(params["tok_emb"], ids, offsets)


def encode(params, ids, offsets, config=None):  # inference: no cache kept; training always counts n
    pool = (sublinear_bag_forward if (config or {}).get("pooling") == "sublinear"
            else embedding_bag_forward)
    return pool(params["tok_emb"], ids, offsets)[0]


def backward(demb, cache):
    return {"tok_emb": embedding_bag_backward(demb, cache)}
