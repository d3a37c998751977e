"""The small transformer encoder: pre-LayerNorm blocks, mean pooling.

    x = tok_emb[ids] + pos_emb[position]                 (M, D) packed tokens
    for each block:
        x = x + drop(attn(ln1(x)))                       attention over each view
        x = x + drop(mlp(ln2(x)))                        mlp = linear -> GELU -> linear
    emb = masked_mean(ln_f(x))                           (N, D)

The encoder interface of docs/DESIGN.md: ``init_params``, ``forward``,
``backward``. Views arrive ragged (``ids`` + ``offsets``); views longer than
``max_len`` are cut to their first ``max_len`` tokens. Every position-wise
layer works on the M real tokens only (packed rows, no padding); attention
pads them into an (N, T) grid, T the longest view of the batch, with a key
mask, and gathers the real rows back. Padding therefore never gets work
outside attention, and never gets a gradient.
"""
import math

import numpy as np

from .backend import xp_of
from . import layers as L

DEFAULTS = dict(dim=256, layers=4, heads=4, ffn=1024, max_len=128, dropout=0.1)


def _config(config):
    cfg = dict(DEFAULTS)
    cfg.update(config)
    if cfg["dim"] % cfg["heads"]:
        raise ValueError(f"dim {cfg['dim']} is not a multiple of heads {cfg['heads']}")
    return cfg


def init_params(config, rng):
    """BERT/GPT-2 init: N(0, 0.02) weights and embeddings, zero biases,
    LayerNorm gain 1 / bias 0, residual output projections (attention out
    and the second MLP linear) scaled by 1/sqrt(2 * layers). float32."""
    cfg = _config(config)
    V, D, F = cfg["vocab_size"], cfg["dim"], cfg["ffn"]
    std = 0.02
    std_res = std / math.sqrt(2 * cfg["layers"])

    def normal(shape, s=std):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    def zeros(n):
        return np.zeros(n, np.float32)

    p = {"tok_emb": normal((V, D)), "pos_emb": normal((cfg["max_len"], D))}
    for i in range(cfg["layers"]):
        b = f"blocks.{i}."
        p[b + "ln1.g"], p[b + "ln1.b"] = np.ones(D, np.float32), zeros(D)
        p[b + "attn.qkv.w"], p[b + "attn.qkv.b"] = normal((D, 3 * D)), zeros(3 * D)
        p[b + "attn.out.w"], p[b + "attn.out.b"] = normal((D, D), std_res), zeros(D)
        p[b + "ln2.g"], p[b + "ln2.b"] = np.ones(D, np.float32), zeros(D)
        p[b + "mlp.fc.w"], p[b + "mlp.fc.b"] = normal((D, F)), zeros(F)
        p[b + "mlp.proj.w"], p[b + "mlp.proj.b"] = normal((F, D), std_res), zeros(D)
    p["ln_f.g"], p["ln_f.b"] = np.ones(D, np.float32), zeros(D)
    return p


def layout(ids, offsets, max_len):
    """Cut views to max_len and place each kept token in the (N, T) grid.

    Returns (ids_kept (M,), pos (M,) position within its view, index (M,)
    flat grid cell view * T + pos, key_mask (N, T) bool, T). Host NumPy."""
    ids = np.asarray(ids)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    N = len(lengths)
    view = np.repeat(np.arange(N), lengths)
    pos = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
    keep = pos < max_len
    ids, pos, view = ids[keep], pos[keep], view[keep]
    cut = np.minimum(lengths, max_len)
    T = max(1, int(cut.max())) if N else 1
    key_mask = np.arange(T)[None, :] < cut[:, None]
    return ids, pos, view * T + pos, key_mask, T


def forward(params, ids, offsets, config, train=False, rng=None):
    """emb (N, dim) in the params' dtype, and the cache for ``backward``.

    train=True turns dropout on (attention weights and residual branches,
    p = config["dropout"]); its masks are drawn from ``rng`` (required)."""
    cfg = _config(config)
    p_drop = cfg["dropout"] if train else 0.0
    if train and p_drop > 0 and rng is None:
        raise ValueError("forward(train=True) needs rng for the dropout masks")
    if not train:
        rng = None
    xp = xp_of(params["tok_emb"])
    ids, pos, index, key_mask, T = layout(ids, offsets, cfg["max_len"])
    N = key_mask.shape[0]
    index_x, key_mask_x = xp.asarray(index), xp.asarray(key_mask)

    x, c_tok = L.embedding_forward(params["tok_emb"], ids)            # (M, D)
    xpos, c_pos = L.positional_forward(params["pos_emb"], pos)
    x += xpos
    del xpos

    blocks = []
    for i in range(cfg["layers"]):
        b = f"blocks.{i}."
        h, c_ln1 = L.layernorm_forward(x, params[b + "ln1.g"], params[b + "ln1.b"])
        h, c_attn = L.attention_forward(
            h, index_x, key_mask_x, params[b + "attn.qkv.w"], params[b + "attn.qkv.b"],
            params[b + "attn.out.w"], params[b + "attn.out.b"], cfg["heads"], p_drop, rng)
        h, c_d1 = L.dropout_forward(h, p_drop, rng)
        x = x + h                                                     # residual
        h, c_ln2 = L.layernorm_forward(x, params[b + "ln2.g"], params[b + "ln2.b"])
        h, c_fc = L.linear_forward(h, params[b + "mlp.fc.w"], params[b + "mlp.fc.b"])
        h, c_gelu = L.gelu_forward(h)
        h, c_proj = L.linear_forward(h, params[b + "mlp.proj.w"], params[b + "mlp.proj.b"])
        h, c_d2 = L.dropout_forward(h, p_drop, rng)
        x = x + h                                                     # residual
        blocks.append((c_ln1, c_attn, c_d1, c_ln2, c_fc, c_gelu, c_proj, c_d2))

    x, c_lnf = L.layernorm_forward(x, params["ln_f.g"], params["ln_f.b"])
    x, c_pad = L.pad_forward(x, index_x, N, T)                        # (N, T, D)
    emb, c_pool = L.mean_pool_forward(x, key_mask_x)
    cache = (cfg["layers"], c_tok, c_pos, blocks, c_lnf, c_pad, c_pool)
    return emb, cache


def backward(demb, cache):
    """Gradients of every parameter: dense arrays, and a RowGrad for tok_emb
    holding only the ids of real (non-padding, kept) tokens."""
    n_layers, c_tok, c_pos, blocks, c_lnf, c_pad, c_pool = cache
    g = {}
    dx = L.mean_pool_backward(demb, c_pool)                          # (N, T, D)
    dx = L.pad_backward(dx, c_pad)                                    # (M, D)
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
    g["pos_emb"] = L.positional_backward(dx, c_pos)
    g["tok_emb"] = L.embedding_backward(dx, c_tok)
    return g
