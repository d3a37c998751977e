"""Lesson 3: the bag-of-token-embeddings encoder, forward and backward.

What it teaches
    The simplest text encoder: a table of V token vectors, and a text's vector
    is the mean of its tokens' rows (an EmbeddingBag in "mean" mode). Batches
    are ragged (one flat id array + offsets), so no work goes to padding. We
    write the forward and the backward on paper, compare them with the
    package's functions, and check the backward against finite differences.

What to look at
    - the forward is a weighted sum of table rows (minembed/core/bag.py writes
      it as a scatter-add), in matrix form a sparse product out = A @ table,
      where A[i, u] = count(u in view i) / len(view i) (how its fast twin
      computes it: lesson 9);
    - the backward is A^T @ dout, and it touches only the rows the batch used
      (a RowGrad), which is why one step is cheap even with a huge vocabulary;
    - the finite-difference check: relative error ~1e-10, not ~1.

Run:  python lessons/03_bag_encoder.py          (add --fast for the quick version)
"""
import os
import sys
import time

import numpy as np

from minembed import Corpus, TrainConfig
from minembed.core import bag
from minembed.core.bag import embedding_bag_backward, embedding_bag_forward
from minembed.core.gradcheck import check_grads
from minembed.core.layers import RowGrad, densify
from minembed.core.pairs import PairSampler

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# ---------------------------------------------------------------------------
# 1. Forward on a toy batch
#    3 views over a vocabulary of 6 tokens: [1, 2, 2], [] (empty), [5, 0]
#    out_i = (1 / len_i) * sum_{t in view i} table[id_t]        (N, D)
# ---------------------------------------------------------------------------
V, D = 6, 3
table = rng.standard_normal((V, D))
ids = np.array([1, 2, 2, 5, 0])
offsets = np.array([0, 3, 3, 5])          # view i = ids[offsets[i]:offsets[i+1]]
out, cache = embedding_bag_forward(table, ids, offsets)
by_hand = np.stack([(table[1] + 2 * table[2]) / 3, np.zeros(D), (table[5] + table[0]) / 2])
print("table (V=6, D=3):\n", table)
print("views: [1, 2, 2], [], [5, 0]")
print("out = mean of each view's rows:\n", out)
assert np.allclose(out, by_hand), "the forward must be the mean of the token rows"
assert not out[1].any(), "an empty view gives the zero vector"

# The same thing as a matrix: A[i, u] = count of u in view i / len(view i)
A = np.zeros((3, V))
for i in range(3):
    for t in ids[offsets[i]:offsets[i + 1]]:
        A[i, t] += 1.0 / (offsets[i + 1] - offsets[i])
print("A (N x V):\n", A)
assert np.allclose(A @ table, out)

# ---------------------------------------------------------------------------
# 2. Backward
#    out = A @ table  =>  dL/dtable = A^T @ dout.   Row u of it is
#    sum over views i of count(u, i) / len_i * dout_i, and it is zero for every
#    token no view contains, so the package returns only the touched rows:
#    RowGrad(rows = distinct ids, values = (A^T dout)[rows]).
# ---------------------------------------------------------------------------
dout = rng.standard_normal(out.shape)
g = embedding_bag_backward(dout, cache)
print("dout:\n", dout)
print("gradient rows", g.rows, "values:\n", g.values)
assert isinstance(g, RowGrad) and list(g.rows) == [0, 1, 2, 5]   # tokens 3 and 4 are not used
assert np.allclose(densify(g, table.shape), A.T @ dout)

# ---------------------------------------------------------------------------
# 3. Finite differences
#    For a scalar loss L(table) = sum(out * W) (any fixed W), dL/dout = W.
#    check_grads perturbs each entry of the table by +-eps and compares
#    (L(+eps) - L(-eps)) / 2 eps with the analytic gradient, in float64.
# ---------------------------------------------------------------------------
V, D, N = 50, 8, 7
table = rng.standard_normal((V, D))
lengths = rng.integers(1, 9, size=N)
lengths[2] = 0                                          # an empty view too
offsets = np.r_[0, np.cumsum(lengths)]
ids = rng.integers(0, V, size=offsets[-1])
W = rng.standard_normal((N, D))


def loss():
    return float((embedding_bag_forward(table, ids, offsets)[0] * W).sum())


out, cache = embedding_bag_forward(table, ids, offsets)
grad = densify(embedding_bag_backward(W, cache), table.shape)
err = check_grads(loss, {"table": table}, {"table": grad})["table"]
print(f"\nfinite-difference check, {N} views of lengths {lengths.tolist()}: relative error "
      f"{err:.2e}")
assert err < 1e-6

# and a wrong derivative is caught: forget the 1/len_i weighting
wrong = np.zeros_like(table)
np.add.at(wrong, ids, W[np.repeat(np.arange(N), lengths)])      # sum, not mean
err_wrong = check_grads(loss, {"table": table}, {"table": wrong})["table"]
print(f"the same check on a wrong gradient (sum instead of mean): relative error {err_wrong:.2f}")
assert err_wrong > 0.1

# ---------------------------------------------------------------------------
# 4. The encoder interface, on a real batch of crop pairs
#    bag.init_params / bag.forward / bag.backward are what training calls.
# ---------------------------------------------------------------------------
source = Corpus()
tok = source.tokenizer(2048 if FAST else 8192)
tc = source.tokenized(tok)
sampler = PairSampler(tc, TrainConfig())
B = 64 if FAST else 256
ids, offsets = sampler.sample(sampler.usable[:B], np.random.default_rng(0))
config = dict(vocab_size=tok.get_vocab_size(), dim=256)
params = bag.init_params(config, np.random.default_rng(0))      # N(0, 0.02), as in the paper
t0 = time.perf_counter()
emb, cache = bag.forward(params, ids, offsets, config)
t1 = time.perf_counter()
grads = bag.backward(np.ones_like(emb), cache)
t2 = time.perf_counter()
print(f"\na batch of {B} pairs = {2 * B} views, {len(ids):,} tokens: emb {emb.shape} {emb.dtype}")
print(f"   forward {1e3 * (t1 - t0):.2f} ms, backward {1e3 * (t2 - t1):.2f} ms; the gradient "
      f"touches {len(grads['tok_emb'].rows):,} of {config['vocab_size']:,} rows")
assert emb.shape == (2 * B, 256) and emb.dtype == np.float32
assert len(grads["tok_emb"].rows) == len(np.unique(ids)) < config["vocab_size"]
# the mean of N(0, 0.02^2) rows: norms shrink like 0.02 sqrt(D / len)
lens = np.diff(offsets)
pred = 0.02 * np.sqrt(256 / lens)
ratio = np.linalg.norm(emb, axis=1) / pred
print(f"   |emb| / (0.02 sqrt(D / len)) = {ratio.mean():.2f} on average "
      "(repeated tokens make it > 1)")
assert 0.8 < np.median(ratio) < 2.0

print("\nlesson 3 OK")
