"""The bag-of-token-embeddings encoder: a text's vector is the mean of its token vectors (an
``EmbeddingBag(mode="mean")`` written by hand). Batches are *ragged*: one flat id array plus
offsets, no padding.

The layer is a sparse matrix product. For N views over U distinct tokens let
A be the (N, U) matrix with A[i, u] = (count of token u in view i) / len(i):

    forward:   out = A @ table[uniq]            (N, D)   (A indexed by token id: (N, V) @ (V, D))
    backward:  d table[uniq] = A.T @ dout       (U, D); every other row: 0

so the backward touches only the U rows the batch used (scipy's CSR product: far faster
than ``np.add.at``), and the forward (all that encoding does) never looks for them.
"""
import numpy as np

from ..fast import cuda
from .backend import xp_of
from .layers import RowGrad

DEFAULTS = dict(dim=256)


def _sparse_module(xp):
    import scipy.sparse
    return scipy.sparse if xp is np else __import__("cupyx.scipy.sparse").scipy.sparse


def embedding_bag_forward(table, ids, offsets):
    """Mean of each view's token rows. table: (V, D); ids: (M,) int; offsets: (N+1,) int, view
    i = ids[offsets[i]:offsets[i+1]]. Returns out (N, D) in table's dtype (an empty view: zeros) and the cache."""
    if cuda.use_kernels(table):  # on a GPU: one kernel (minembed/kernels/kernels.cu)
        return cuda.embedding_bag_forward(table, ids, offsets)
    xp = xp_of(table)
    ids, offsets = xp.asarray(ids), xp.asarray(offsets, dtype=xp.int64)
    lengths = xp.diff(offsets)
    # each occurrence weighs 1/len(its view); repeated tokens add up in the product
    w = (1.0 / xp.maximum(lengths, 1)).astype(table.dtype)
    weights = xp.repeat(w, lengths) if xp is np else \
        w[xp.searchsorted(offsets, xp.arange(ids.shape[0]), side="right") - 1]  # (CuPy: no array repeat)
    # out = A @ table[uniq], with A's entries indexed by id: (N, V) @ (V, D)
    A_ids = _sparse_module(xp).csr_matrix((weights, ids, offsets), shape=(offsets.shape[0] - 1, table.shape[0]))
    return xp.asarray(A_ids @ table), (ids, offsets, weights, table.shape[0])


def sublinear_bag_forward(table, ids, offsets):
    """The same with a token n times in a view weighing 1 + log n, not n (TF-IDF's sublinear tf;
    ``--pooling sublinear``, encoding only), a view's weights summing to 1. Same cache."""
    xp, sparse = xp_of(table), _sparse_module(xp_of(table))
    A = sparse.csr_matrix((xp.ones(len(ids), table.dtype), xp.asarray(ids), xp.asarray(offsets)),
                          shape=(len(offsets) - 1, table.shape[0]), copy=True)  # (sum_duplicates sorts in place)
    A.sum_duplicates()                # one entry per distinct token of a view: its count n
    A.data = 1 + xp.log(A.data)
    A = (sparse.diags(1 / xp.maximum(xp.asarray(A.sum(axis=1)).ravel(), 1)) @ A).astype(table.dtype)
    return xp.asarray(A @ table), (A.indices, A.indptr, A.data, table.shape[0])


def embedding_bag_backward(dout, cache):
    """Gradient for the rows the batch touched: d table[uniq] = A.T @ dout."""
    if isinstance(cache, cuda.BagCache):  # the forward ran the CUDA kernel
        return RowGrad(*cuda.embedding_bag_backward(dout, cache))
    xp = xp_of(dout)
    ids, offsets, weights, vocab = cache
    # sorted distinct ids, and for each occurrence the index of its id in uniq:
    # np.unique(ids, return_inverse=True) without sorting, via a (V,) mask
    seen = xp.zeros(vocab, dtype=bool)
    seen[ids] = True
    uniq = xp.flatnonzero(seen)                # (U,)
    inv = (xp.cumsum(seen) - 1)[ids]           # (M,) position of each id in uniq
    A = _sparse_module(xp).csr_matrix((weights, inv, offsets),
                                      shape=(offsets.shape[0] - 1, uniq.shape[0]))  # (N, U)
    return RowGrad(uniq, xp.asarray(A.T.tocsr() @ dout))  # as CSR: rows written in order


# the encoder interface (docs/DESIGN.md): the model is just this one layer

def init_params(config, rng):
    """A random table (vocab_size, dim), std 0.02 as in the paper's bare embedding layer."""
    v, d = int(config["vocab_size"]), int(config["dim"])
    table = rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.02)
    return {"tok_emb": table}


def forward(params, ids, offsets, config=None, train=False, rng=None):
    return embedding_bag_forward(params["tok_emb"], ids, offsets)


def encode(params, ids, offsets, config=None):  # inference: no cache kept; training always counts n
    pool = sublinear_bag_forward if (config or {}).get("pooling") == "sublinear" else embedding_bag_forward
    return pool(params["tok_emb"], ids, offsets)[0]


def backward(demb, cache):
    return {"tok_emb": embedding_bag_backward(demb, cache)}
