"""Run by tests/test_distributed.py as ``mpiexec -n R python tests/mpi_checks.py``: the
collectives of minembed.product.distributed.Comm and the gather's backward, asserted on every
rank; rank 0 prints "collectives OK"."""
import numpy as np
from mpi4py import MPI

import minembed.product.distributed as dist
from minembed.errors import MinembedError
from minembed.core.gradcheck import check_grads
from minembed.core.layers import RowGrad
from minembed.core.loss import infonce_backward, infonce_forward

comm = dist.Comm(MPI.COMM_WORLD)
R, r = comm.size, comm.rank

# all-gather: a different number of rows on each rank, in rank order
got = comm.allgather(np.full((r + 1, 3), r, np.float32), [q + 1 for q in range(R)])
assert np.array_equal(got[:, 0], np.repeat(np.arange(R), np.arange(1, R + 1)))


def grads_of(q, V=40, D=3):  # rank q's gradients: a dense one and an embedding table's rows
    g = np.random.default_rng(q)
    rows = np.sort(g.choice(V, 8 + 3 * q, replace=False))
    return {"w": g.standard_normal((2, 5)).astype(np.float32),
            "tok_emb": RowGrad(rows, g.standard_normal((len(rows), D)).astype(np.float32))}


params = {"w": np.zeros((2, 5), np.float32), "tok_emb": np.zeros((40, 3), np.float32)}
want_w = sum(grads_of(q)["w"].astype(np.float64) for q in range(R))
want_t = np.zeros((40, 3))
for q in range(R):
    np.add.at(want_t, grads_of(q)["tok_emb"].rows, grads_of(q)["tok_emb"].values)
union = np.unique(np.concatenate([grads_of(q)["tok_emb"].rows for q in range(R)]))
for factor in (1e9, 0.0):  # gathered rows, then a dense all-reduce of the table
    dist.SPARSE_FACTOR = factor
    g = comm.sum_grads(grads_of(r), params)
    assert np.allclose(g["w"], want_w, atol=1e-6)
    assert np.array_equal(g["tok_emb"].rows, union)
    assert np.allclose(g["tok_emb"].values, want_t[union], atol=1e-6)
    # every rank holds the very same numbers (else their weights would drift apart)
    assert len(set(MPI.COMM_WORLD.allgather(g["tok_emb"].values.tobytes()))) == 1

# an error on one rank only is raised on every rank
try:
    comm.lead_first(lambda shared: (_ for _ in ()).throw(MinembedError("boom")) if r == R - 1
                    else ("result", "shared"))
except MinembedError as e:
    assert str(e) == "boom"
else:
    raise AssertionError("no error raised")
assert (comm.lead_first(lambda shared: (shared or "lead", f"from {r}"))
        == ("lead" if r == 0 else "from 0"))

# the gather's backward, by finite differences across the ranks (float64): every rank
# holds its own pairs; the loss is InfoNCE over all of them, gathered; rank r's analytic
# gradient is its rows of the gradient of the whole loss (what make_step back-propagates)
B, D, scale = 2 * R + 1, 4, 5.0
share = [(q + 1) * B // R - q * B // R for q in range(R)]
lo, hi = r * B // R, (r + 1) * B // R
rng = np.random.default_rng(7)
A, P = rng.standard_normal((B, D)), rng.standard_normal((B, D))
mine = {"a": A[lo:hi].copy(), "p": P[lo:hi].copy()}


def loss():
    both = comm.allgather(np.stack([mine["a"], mine["p"]], axis=1), share)
    return infonce_forward(both[:, 0], both[:, 1], scale=scale)[0]


_, _, cache = infonce_forward(A, P, scale=scale)
da, dp = infonce_backward(1.0, cache)
for q in range(R):  # rank q's rows are checked; the others perturb a copy no one reads
    own = mine if q == r else {"a": np.zeros((share[q], D)), "p": np.zeros((share[q], D))}
    rows = slice(q * B // R, (q + 1) * B // R)
    err = check_grads(loss, own, {"a": da[rows], "p": dp[rows]})
    if q == r:
        assert max(err.values()) < 1e-7, err
if r == 0:
    print("collectives OK")
