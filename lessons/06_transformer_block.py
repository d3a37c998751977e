"""Lesson 6: inside a transformer block, every backward derived and checked.

What it teaches
    The small transformer of ``minembed.core.transformer`` is a stack of pre-LN blocks

        x = x + attn(ln1(x))          attention over the tokens of each view
        x = x + mlp(ln2(x))           mlp = linear -> GELU -> linear

    and mean pooling at the end. Each layer is a pair of plain functions in
    ``minembed.core.layers``: ``x_forward(...) -> (out, cache)`` and
    ``x_backward(dout, cache)`` -> the gradients of the forward's inputs, in
    their order. We take LayerNorm, GELU,
    masked softmax and attention one at a time: what it computes, the
    derivative on paper (in the comments, next to the code), and a
    finite-difference check. Then the whole model, loss to every parameter.
    (These functions are the textbook's references; on NumPy arrays a few of
    them, GELU and attention's core, hand the work to a faster twin with the
    same results: lesson 9 shows how.)

What to look at
    - LayerNorm's backward has three terms because the mean and the variance
      both depend on every input;
    - attention runs on *packed* token rows; only the core is padded into a
      grid, and the key mask makes padding invisible: a view gets the same
      output alone or next to a longer one;
    - every relative error is ~1e-9 or smaller (float64 central differences).

Run:  python lessons/06_transformer_block.py          (add --fast for the quick version)
"""
import math
import os
import sys

import numpy as np

from minembed.core import transformer
from minembed.core.gradcheck import check_grads
from minembed.core.layers import (attention_backward, attention_forward, densify, gelu_backward,
                                  gelu_forward, layernorm_backward, layernorm_forward,
                                  softmax_backward, softmax_forward)

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)
TOL = 1e-6


def report(name, errors):
    print(f"   {name}: " + ", ".join(f"d{k} {e:.1e}" for k, e in errors.items()))
    assert max(errors.values()) < TOL, f"{name}: a gradient does not match finite differences"


# ---------------------------------------------------------------------------
# 1. LayerNorm over the last dim (C features)
#    mu = mean(x), var = mean((x - mu)^2), rstd = 1/sqrt(var + eps)
#    xhat = (x - mu) * rstd,   y = xhat * g + b
#  Backward, with dxhat = dy * g:
#    db = sum_rows dy,  dg = sum_rows dy * xhat
#    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
#  (the 2nd term: moving one x_j moves mu, which shifts every xhat_k; the 3rd:
#   it moves var too, which rescales every xhat_k.)
# ---------------------------------------------------------------------------
print("1. LayerNorm")
x = 3.0 + 2.0 * rng.standard_normal((4, 8))
g, b = 1 + 0.5 * rng.standard_normal(8), 0.5 * rng.standard_normal(8)
y, cache = layernorm_forward(x, np.ones(8), np.zeros(8))
print(f"   with g = 1, b = 0 each row of y has mean {y.mean(1).max():.1e} and variance "
      f"{y.var(1).mean():.6f} (1 - eps/var)")
assert np.allclose(y.mean(1), 0) and np.allclose(y.var(1), 1, atol=1e-4)
W = rng.standard_normal((4, 8))                      # L = sum(y * W)  =>  dy = W
y, cache = layernorm_forward(x, g, b)
dx, dg, db = layernorm_backward(W, cache)
# by hand, the formula above
xhat = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
dxhat = W * g
dx_hand = (dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True)) \
    / np.sqrt(x.var(1, keepdims=True) + 1e-5)
assert np.allclose(dx, dx_hand)
assert np.allclose(dx.sum(1), 0)    # shifting a whole row does nothing: the gradient sums to 0
report("finite differences", check_grads(lambda: float((layernorm_forward(x, g, b)[0] * W).sum()),
                                         {"x": x, "g": g, "b": b}, {"x": dx, "g": dg, "b": db}))

# ---------------------------------------------------------------------------
# 2. GELU, tanh approximation (GPT-2's, and its fast twins': lesson 9)
#    y = 0.5 x (1 + t),  t = tanh(u),  u = c (x + a x^3),  c = sqrt(2/pi), a = 0.044715
#    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
# ---------------------------------------------------------------------------
print("2. GELU")
x = np.linspace(-4, 4, 81)
y, cache = gelu_forward(x)
erf_gelu = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
print(f"   largest difference from the exact x * Phi(x): {np.abs(y - erf_gelu).max():.1e}")
assert np.abs(y - erf_gelu).max() < 1e-3
t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))
d_hand = (0.5 * (1 + t)
          + 0.5 * x * (1 - t ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2))
assert np.allclose(gelu_backward(np.ones_like(x), cache), d_hand)
x = rng.standard_normal((5, 7)) * 2
W = rng.standard_normal(x.shape)
report("finite differences", check_grads(lambda: float((gelu_forward(x)[0] * W).sum()),
                                         {"x": x}, {"x": gelu_backward(W, gelu_forward(x)[1])}))

# ---------------------------------------------------------------------------
# 3. Softmax with a key mask
#    p_j = exp(z_j) / sum_k exp(z_k) over the allowed keys, p_j = 0 for masked ones
#    dz_j = p_j (dp_j - sum_k p_k dp_k)    (masked keys: p_j = 0, so dz_j = 0)
# ---------------------------------------------------------------------------
print("3. masked softmax")
z = rng.standard_normal((3, 6))
mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
p, cache = softmax_forward(z, mask)
print("   p =\n", p)
assert np.allclose(p[:2].sum(1), 1) and (p[~mask] == 0).all()
assert not p[2].any(), "a row with no allowed key gives zeros, not NaN"
W = rng.standard_normal(z.shape)
dz = softmax_backward(W, cache)
assert (dz[~mask] == 0).all()
report("finite differences", check_grads(lambda: float((softmax_forward(z, mask)[0] * W).sum()),
                                         {"z": z}, {"z": dz}))

# ---------------------------------------------------------------------------
# 4. Attention on packed rows with a padding mask
#    Two views of 3 and 5 tokens: M = 8 packed rows of D features. layout()
#    places them into one grid (N = 2, T = 5) with key_mask marking real cells.
#    qkv = x W_qkv + b;  per view and head  a = softmax(q k^T / sqrt(Dh), mask)
#    ctx = a v;   y = ctx W_out + b_out
#  Backward (per head): dv = a^T dctx, da = dctx v^T, ds = softmax_backward(da),
#    dq = ds k / sqrt(Dh), dk = ds^T q / sqrt(Dh); then the two linears.
# ---------------------------------------------------------------------------
print("4. attention with a padding mask")
D, H = 8, 2
offsets = np.array([0, 3, 8])
lay = transformer.layout(np.zeros(8, np.int32), offsets, max_len=16, buckets=1)
index, key_mask = lay["grids"][0]
print(f"   packed rows -> grid cells {index.tolist()}; key mask\n", key_mask.astype(int))
w = {"x": rng.standard_normal((8, D)), "w_qkv": 0.5 * rng.standard_normal((D, 3 * D)),
     "b_qkv": 0.1 * rng.standard_normal(3 * D), "w_out": 0.5 * rng.standard_normal((D, D)),
     "b_out": 0.1 * rng.standard_normal(D)}


def attn(grids, x=None):
    return attention_forward(w["x"] if x is None else x, grids, w["w_qkv"], w["b_qkv"],
                             w["w_out"], w["b_out"], H)


y, cache = attn(lay["grids"])
# Padding is invisible: the 3-token view (packed first: views are sorted by
# length) alone, in a grid of its own with T = 3, gives the same rows.
alone = transformer.layout(np.zeros(3, np.int32), np.array([0, 3]), max_len=16)
y_alone, _ = attn(alone["grids"], w["x"][:3])
print("   short view alone vs next to a longer one: max difference "
      f"{np.abs(y_alone - y[:3]).max():.1e}")
assert np.allclose(y_alone, y[:3], atol=1e-12)
W = rng.standard_normal(y.shape)
dx, dw_qkv, db_qkv, dw_out, db_out = attention_backward(W, cache)
report("finite differences", check_grads(
    lambda: float((attn(lay["grids"])[0] * W).sum()), w,
    {"x": dx, "w_qkv": dw_qkv, "b_qkv": db_qkv, "w_out": dw_out, "b_out": db_out}))

# ---------------------------------------------------------------------------
# 5. The whole model: embedding + positions, blocks, final LN, mean pooling
#    transformer.backward runs the layers' backwards in reverse order; the
#    residual x = x + f(x) sends dx both straight through and into f's backward.
#    Dropout is on (train=True): each evaluation re-seeds the generator, so the
#    finite differences see the same dropout masks as the analytic gradient.
# ---------------------------------------------------------------------------
print("5. the whole transformer, loss -> every parameter (dropout on)")
cfg = dict(vocab_size=30, dim=8, layers=2, heads=2, ffn=16, max_len=6, dropout=0.1)
params = {k: v.astype(np.float64) + 0.3 * rng.standard_normal(v.shape)      # away from the init
          for k, v in transformer.init_params(cfg, np.random.default_rng(1)).items()}
lengths = [3, 7, 0, 5] if FAST else [3, 7, 0, 5, 6, 1]      # 7 > max_len: cut to 6; 0: empty view
offsets = np.r_[0, np.cumsum(lengths)]
ids = rng.integers(0, cfg["vocab_size"], offsets[-1]).astype(np.int32)
W = rng.standard_normal((len(lengths), cfg["dim"]))


def run():
    return transformer.forward(params, ids, offsets, cfg, train=True, rng=np.random.default_rng(5))


emb, cache = run()
grads = transformer.backward(W, cache)
dense = {k: densify(g, params[k].shape) if hasattr(g, "rows") else g for k, g in grads.items()}
errors = check_grads(lambda: float((run()[0] * W).sum()), params, dense,
                     max_entries=20 if FAST else None)
worst = max(errors, key=errors.get)
print(f"   {len(params)} parameters, {sum(p.size for p in params.values()):,} numbers; "
      f"worst relative error {errors[worst]:.1e} ({worst})")
assert max(errors.values()) < TOL, {k: e for k, e in errors.items() if e >= TOL}
assert not emb[2].any(), "an empty view embeds to zero"

print("\nlesson 6 OK")
