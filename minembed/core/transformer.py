"""The small transformer encoder: pre-LayerNorm blocks, mean pooling.

    x = tok_emb[ids] + pos_emb[position]                 (M, D) packed tokens
    for each block:
        x = x + drop(attn(ln1(x)))                       attention over each view
        x = x + drop(mlp(ln2(x)))                        mlp = linear -> GELU -> linear
    emb = mean over each view's rows of ln_f(x)          (N, D)

The lookups and the final mean are the bag model's layer: a lookup is a ragged mean over views
of one token each, the pooling a ragged mean over each view's rows of x taken as a table; so
one scatter (the bag backward) serves every embedding gradient and the pooling's.

Views arrive ragged (``ids`` + ``offsets``) and are cut to ``max_len`` tokens. Position-wise
layers see the M real tokens only; attention pads them into grids with a key mask, the views
sorted by length and split into a few buckets, each padded to its own longest view. Padding
never gets a gradient.
"""
import math

import numpy as np

from . import bag
from . import layers as L
from .backend import to_numpy, xp_of

BUCKETS = 4     # length buckets for attention (config["buckets"] overrides); see layout()


def _config(config):
    """The encoder's hyper-parameters (config.json: vocab_size, dim, layers, heads, ffn, max_len,
    dropout), checked."""
    if config["dim"] % config["heads"]:
        raise ValueError(f"dim {config['dim']} is not a multiple of heads {config['heads']}")
    return config


def init_params(config, rng):
    """BERT/GPT-2 init: N(0, 0.02) weights and embeddings, zero biases, LayerNorm gain 1 / bias
    0, residual output projections (attention out, second MLP linear) scaled by 1/sqrt(2 L)."""
    cfg = _config(config)
    V, D, F, std = cfg["vocab_size"], cfg["dim"], cfg["ffn"], 0.02
    std_res = std / math.sqrt(2 * cfg["layers"])

    def normal(shape, s=std):
        return (rng.standard_normal(shape) * s).astype(np.float32)
    p = {"tok_emb": normal((V, D)), "pos_emb": normal((cfg["max_len"], D))}
    for i in range(cfg["layers"]):
        b = f"blocks.{i}."
        p[b + "ln1.g"], p[b + "ln1.b"] = np.ones(D, np.float32), np.zeros(D, np.float32)
        p[b + "attn.qkv.w"], p[b + "attn.qkv.b"] = normal((D, 3 * D)), np.zeros(3 * D, np.float32)
        p[b + "attn.out.w"], p[b + "attn.out.b"] = normal((D, D), std_res), np.zeros(D, np.float32)
        p[b + "ln2.g"], p[b + "ln2.b"] = np.ones(D, np.float32), np.zeros(D, np.float32)
        p[b + "mlp.fc.w"], p[b + "mlp.fc.b"] = normal((D, F)), np.zeros(F, np.float32)
        p[b + "mlp.proj.w"], p[b + "mlp.proj.b"] = normal((F, D), std_res), np.zeros(D, np.float32)
    p["ln_f.g"], p["ln_f.b"] = np.ones(D, np.float32), np.zeros(D, np.float32)
    return p


def layout(ids, offsets, max_len, buckets=1):
    """Cut views to max_len, pack them in length order (``order``, stable) and split them into
    ``buckets`` runs of about equal count, each padded to its own longest view (a grid). Host
    NumPy. Returns a dict:
      ids, pos   (M,) the kept token ids and their positions, in packed order
      order      (N,) view order[j] is the j-th packed view
      starts     (N+1,) packed view j is rows starts[j]:starts[j+1]
      grids      [(index (M_b,), key_mask (N_b, T_b))] per bucket, in row order
    """
    # bookkeeping: on the host
    ids, offsets = to_numpy(ids), to_numpy(offsets).astype(np.int64, copy=False)
    cut = np.minimum(np.diff(offsets), max_len)
    N = len(cut)
    order = np.argsort(cut, kind="stable")
    lens = cut[order]                                      # sorted lengths
    starts = np.r_[0, np.cumsum(lens)]                     # packed row of each view
    M = int(starts[-1])
    view = np.repeat(np.arange(N), lens)                   # packed view of each row
    pos = np.arange(M) - starts[view]
    ids = ids[offsets[order][view] + pos]

    def grid(v0, v1):                                      # views v0..v1-1 share a grid
        T = max(1, int(lens[v1 - 1]))
        rows = slice(starts[v0], starts[v1])
        index = (view[rows] - v0) * T + pos[rows]
        key_mask = np.arange(T)[None, :] < lens[v0:v1, None]
        return index, key_mask

    bounds = np.linspace(0, N, max(1, min(buckets, N)) + 1).round().astype(int)
    grids = [grid(v0, v1) for v0, v1 in zip(bounds[:-1], bounds[1:]) if v1 > v0]
    return dict(ids=ids, pos=pos, order=order, starts=starts, grids=grids)


def forward(params, ids, offsets, config, train=False, rng=None):
    """emb (N, dim) in the params' dtype, and the cache for ``backward``. train=True turns
    dropout on (attention weights, residual branches; p = config["dropout"]; masks from rng)."""
    return _forward(params, ids, offsets, config, train, rng, keep_cache=True)


def encode(params, ids, offsets, config):
    """emb (N, dim) for inference: forward(train=False) without keeping what the backward would
    need, so memory holds one layer's activations, not all of them."""
    return _forward(params, ids, offsets, config, False, None, keep_cache=False)[0]


def _forward(params, ids, offsets, config, train, rng, keep_cache):
    cfg = _config(config)
    p_drop, rng = (cfg["dropout"], rng) if train else (0.0, None)
    if p_drop > 0 and rng is None:
        raise ValueError("forward(train=True) needs rng for the dropout masks")
    xp = xp_of(params["tok_emb"])
    lay = layout(ids, offsets, cfg["max_len"], cfg.get("buckets", BUCKETS))
    grids = [(xp.asarray(i), xp.asarray(m)) for i, m in lay["grids"]]
    M = len(lay["ids"])
    one_each = xp.arange(M + 1)                                       # M views of one token

    x, c_tok = bag.embedding_bag_forward(params["tok_emb"], xp.asarray(lay["ids"]), one_each)
    xpos, c_pos = bag.embedding_bag_forward(params["pos_emb"], xp.asarray(lay["pos"]), one_each)
    x += xpos                                                         # (M, D)

    blocks = []
    for i in range(cfg["layers"]):
        b = f"blocks.{i}."
        h, c_ln1 = L.layernorm_forward(x, params[b + "ln1.g"], params[b + "ln1.b"])
        h, c_attn = L.attention_forward(
            h, grids, params[b + "attn.qkv.w"], params[b + "attn.qkv.b"],
            params[b + "attn.out.w"], params[b + "attn.out.b"], cfg["heads"], p_drop, rng)
        h, c_d1 = L.dropout_forward(h, p_drop, rng)
        x = x + h                                                     # residual
        h, c_ln2 = L.layernorm_forward(x, params[b + "ln2.g"], params[b + "ln2.b"])
        h, c_fc = L.linear_forward(h, params[b + "mlp.fc.w"], params[b + "mlp.fc.b"])
        h, c_gelu = L.gelu_forward(h)
        h, c_proj = L.linear_forward(h, params[b + "mlp.proj.w"], params[b + "mlp.proj.b"])
        h, c_d2 = L.dropout_forward(h, p_drop, rng)
        x = x + h                                                     # residual
        if keep_cache:
            blocks.append((c_ln1, c_attn, c_d1, c_ln2, c_fc, c_gelu, c_proj, c_d2))

    x, c_lnf = L.layernorm_forward(x, params["ln_f.g"], params["ln_f.b"])
    # view means
    emb, c_pool = bag.embedding_bag_forward(x, xp.arange(M), xp.asarray(lay["starts"]))
    order = xp.asarray(lay["order"])
    out = xp.empty_like(emb)
    out[order] = emb                                                  # back to input order
    cache = (cfg["layers"], c_tok, c_pos, blocks, c_lnf, c_pool, order,
             params["pos_emb"].shape) if keep_cache else None
    return out, cache


def backward(demb, cache):
    """Gradients of every parameter: dense arrays, and a RowGrad for tok_emb holding only the
    ids of real (non-padding, kept) tokens."""
    n_layers, c_tok, c_pos, blocks, c_lnf, c_pool, order, pos_shape = cache
    g = {}
    # every packed row is in one view, so the pooling's row gradient covers all rows in order
    dx = bag.embedding_bag_backward(demb[order], c_pool).values         # (M, D)
    dx, g["ln_f.g"], g["ln_f.b"] = L.layernorm_backward(dx, c_lnf)
    for i in reversed(range(n_layers)):
        b = f"blocks.{i}."
        c_ln1, c_attn, c_d1, c_ln2, c_fc, c_gelu, c_proj, c_d2 = blocks[i]
        # x = x + drop(mlp(ln2(x))): dx flows straight through and into the branch
        dh = L.dropout_backward(dx, c_d2)
        dh, g[b + "mlp.proj.w"], g[b + "mlp.proj.b"] = L.linear_backward(dh, c_proj)
        dh = L.gelu_backward(dh, c_gelu)
        dh, g[b + "mlp.fc.w"], g[b + "mlp.fc.b"] = L.linear_backward(dh, c_fc)
        dh, g[b + "ln2.g"], g[b + "ln2.b"] = L.layernorm_backward(dh, c_ln2)
        dx += dh
        # x = x + drop(attn(ln1(x)))
        dh = L.dropout_backward(dx, c_d1)
        (dh, g[b + "attn.qkv.w"], g[b + "attn.qkv.b"],
         g[b + "attn.out.w"], g[b + "attn.out.b"]) = L.attention_backward(dh, c_attn)
        dh, g[b + "ln1.g"], g[b + "ln1.b"] = L.layernorm_backward(dh, c_ln1)
        dx += dh
    g["pos_emb"] = L.densify(bag.embedding_bag_backward(dx, c_pos), pos_shape)  # small: dense Adam
    g["tok_emb"] = bag.embedding_bag_backward(dx, c_tok)
    return g
