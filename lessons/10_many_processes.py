"""Lesson 10: many processes. In-batch negatives across ranks, the gather's
backward, and gradient caching.

What it teaches
    More in-batch negatives make a better contrastive task, and a big batch
    outgrows one process. With R processes (MPI "ranks") each encoding B/R of
    the B pairs, a rank that scored its anchors against its own positives only
    would give each anchor B/R - 1 negatives instead of B - 1: a different,
    easier loss. So the embeddings are all-gathered, and every anchor is scored
    against all B positives.

    The backward of the gather. Split the loss by rank, L = sum_q L_q (L_q: the
    loss rows of rank q's anchors). Rank r's positives are negatives in every
    rank's rows, so

        dL/de_i = sum_q dL_q/de_i        for each of rank r's embeddings e_i

    a sum over ranks of slices: the gather's backward is a reduce-scatter. A
    rank that keeps its own dL_r/de_i is the classic bug: its positives get
    only the push of its own anchors. minembed computes all of L on every rank
    (B^2 D, small next to the encoders) and keeps its rows of dL/de: the same
    numbers, without that collective. Parameter gradients are sums over views,
    so the ranks' encoder gradients are added (all-reduce) and every rank
    takes the same Adam step.

    Gradient caching (one process, a batch too big for memory): the loss needs
    all B embeddings, but each embedding's backward needs only its own view.
    Encode the batch in chunks keeping no backward caches, compute InfoNCE and
    dL/de for all of it, then re-encode each chunk with its caches and
    back-propagate its rows of dL/de: the same gradient, the memory of a chunk.

What to look at
    - the loss a rank sees without the gather is lower (an easier task);
    - finite differences agree with the reduce-scatter, not with the local slice;
    - on 2 real processes (mpiexec), the same check and the same loss curve as
      one process;
    - the micro-batched gradient equals the full one at a fraction of the memory.

Run:  python lessons/10_many_processes.py          (add --fast for the quick version)
      (parts 3 and 4 need MPI: pip install -e ".[mpi]")
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tracemalloc

import numpy as np

from minembed import Corpus, TrainConfig
from minembed.core.gradcheck import check_grads
from minembed.core.layers import RowGrad
from minembed.core.loss import (infonce_backward, infonce_forward, l2_normalize_backward,
                                l2_normalize_forward)
from minembed.core.pairs import PairSampler
from minembed.product.gradcache import make_step
from minembed.product.model import encoder_module

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"
SCALE = 20.0

if "--ranks" in sys.argv:  # part 3, on each of the processes mpiexec started
    from minembed.product.distributed import connect
    comm = connect()
    R, r = comm.size, comm.rank
    B, D = 6, 4
    lo, hi = r * B // R, (r + 1) * B // R
    rng = np.random.default_rng(1)
    # every rank draws all, keeps its own
    A, P = rng.standard_normal((B, D)), rng.standard_normal((B, D))
    mine = {"a": A[lo:hi].copy(), "p": P[lo:hi].copy()}

    def loss():  # collective: every rank gathers all pairs and computes all of L
        both = comm.allgather(np.stack([mine["a"], mine["p"]], axis=1), [B // R] * R)
        return infonce_forward(both[:, 0], both[:, 1], scale=SCALE)[0]

    _, _, cache = infonce_forward(A, P, scale=SCALE)
    da, dp = infonce_backward(1.0, cache)
    for q in range(R):  # in lockstep: rank q perturbs its pairs, the others a copy no one reads
        own = mine if q == r else {"a": np.zeros((B // R, D)), "p": np.zeros((B // R, D))}
        err = check_grads(loss, own, {"a": da[q * B // R:(q + 1) * B // R],
                                      "p": dp[q * B // R:(q + 1) * B // R]})
        if q == r:
            print(f"rank {r}: finite differences across {R} processes vs its rows of dL/de: "
                  f"relative error a {err['a']:.1e}, p {err['p']:.1e}", flush=True)
            assert max(err.values()) < 1e-7
    sys.exit(0)

np.set_printoptions(precision=4, suppress=True)
source = Corpus()
tok = source.tokenizer(8192)
sampler = PairSampler(source.tokenized(tok), TrainConfig())

# ---------------------------------------------------------------------------
# 1. Why the gather: the loss a rank would see on its own share
# ---------------------------------------------------------------------------
B, R = 64, 4
cfg = TrainConfig(model="bag", dim=64, vocab_size=8192).resolved()
bag = encoder_module("bag")
enc_cfg = cfg.encoder_config(tok.get_vocab_size())
params = bag.init_params(enc_cfg, np.random.default_rng(0))
rng = np.random.default_rng(1)
ids, offsets = sampler.sample(rng.choice(sampler.usable, B, replace=False), rng)
emb = bag.encode(params, ids, offsets, enc_cfg).astype(np.float64)
a, p = emb[:B], emb[B:]
whole, acc, _ = infonce_forward(a, p, SCALE)
local = [infonce_forward(a[q * B // R:(q + 1) * B // R], p[q * B // R:(q + 1) * B // R], SCALE)
         for q in range(R)]
print(f"{B} pairs of the built-in corpus, untrained bag model: loss {whole:.3f} (chance log B = "
      f"{np.log(B):.3f}), in-batch accuracy {acc:.2f}")
print(f"each of {R} ranks alone, {B // R - 1} negatives per anchor: loss "
      f"{np.mean([L for L, _, _ in local]):.3f} (chance {np.log(B // R):.3f}), accuracy "
      f"{np.mean([k for _, k, _ in local]):.2f}: an easier task")
assert np.mean([L for L, _, _ in local]) < whole

# ---------------------------------------------------------------------------
# 2. The gather's backward, on 2 simulated ranks (float64)
#    S = scale an pn^T; rank q's loss rows: L_q = (1/B) sum_{i of q} [logsumexp_j S_ij - S_ii],
#    dL_q/dS = (P - I) / B on q's rows, 0 elsewhere; then the products and the
#    normalisations' backward as in lesson 4: dL_q/da, dL_q/dp for *all* B pairs.
# ---------------------------------------------------------------------------
R, B, D = 2, 6, 5
rng = np.random.default_rng(2)
a, p = rng.standard_normal((B, D)), rng.standard_normal((B, D))
rows = [slice(q * B // R, (q + 1) * B // R) for q in range(R)]


def rank_loss_grads(q):
    """(L_q, dL_q/da, dL_q/dp) over the gathered batch, as rank q computes them."""
    an, ca = l2_normalize_forward(a)
    pn, cp = l2_normalize_forward(p)
    S = SCALE * an @ pn.T
    Pm = np.exp(S - S.max(1, keepdims=True))
    Pm /= Pm.sum(1, keepdims=True)
    dS = np.zeros_like(S)
    dS[rows[q]] = (Pm - np.eye(B))[rows[q]] / B
    Lq = float(np.sum(np.log(np.exp(S - S.max(1, keepdims=True)).sum(1))[rows[q]]
                      + S.max(1)[rows[q]] - np.diag(S)[rows[q]]) / B)
    return (Lq, l2_normalize_backward(SCALE * dS @ pn, ca),
            l2_normalize_backward(SCALE * dS.T @ an, cp))


parts = [rank_loss_grads(q) for q in range(R)]
_, _, cache = infonce_forward(a, p, SCALE)
da, dp = infonce_backward(1.0, cache)
assert abs(sum(L for L, _, _ in parts) - infonce_forward(a, p, SCALE)[0]) < 1e-12   # L = sum_q L_q
reduce_scatter = [(sum(g[1] for g in parts)[rows[r]], sum(g[2] for g in parts)[rows[r]])
                  for r in range(R)]
local_slice = [(parts[r][1][rows[r]], parts[r][2][rows[r]]) for r in range(R)]
whole_rows = [(da[rows[r]], dp[rows[r]]) for r in range(R)]
print(f"\nrank 0's positives get a push from rank 1's anchors too: "
      f"|dL_1/dp[rank 0 rows]| = {np.linalg.norm(parts[1][2][rows[0]]):.3f}")

for r in range(R):  # finite differences of the whole loss in rank r's rows
    mine = {"a": a[rows[r]].copy(), "p": p[rows[r]].copy()}

    def f():
        a2, p2 = a.copy(), p.copy()
        a2[rows[r]], p2[rows[r]] = mine["a"], mine["p"]
        return infonce_forward(a2, p2, SCALE)[0]
    errs = {name: check_grads(f, mine, {"a": g[0], "p": g[1]}) for name, g in
            [("reduce-scatter", reduce_scatter[r]), ("all of L, own rows", whole_rows[r]),
             ("local slice (the bug)", local_slice[r])]}
    print(f"rank {r}: finite differences vs " + ", ".join(
        f"{name} {max(e.values()):.1e}" for name, e in errs.items()))
    assert (max(errs["reduce-scatter"].values()) < 1e-7
            and max(errs["all of L, own rows"].values()) < 1e-7)
    assert max(errs["local slice (the bug)"].values()) > 1e-2
    assert np.allclose(reduce_scatter[r][1], whole_rows[r][1], atol=1e-12)

# ---------------------------------------------------------------------------
# 3. On real processes (MPI): the check across 2 ranks, and a training run
#    on 1 and 2 processes with the same global batch and seed.
# ---------------------------------------------------------------------------
mpiexec = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpiexec = None
if mpiexec is None:
    print('\n(no MPI here: pip install -e ".[mpi]" for parts 3 and 4 on real processes)')
else:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, "--ranks"], env=env,
                         capture_output=True, text=True, timeout=300)
    print("\n" + res.stdout.strip())
    assert res.returncode == 0 and res.stdout.count("finite differences across 2") == 2, \
        res.stderr[-2000:]
    steps = "6" if FAST else "40"
    with tempfile.TemporaryDirectory() as d:
        curves = {}
        for n in (1, 2):
            out = os.path.join(d, f"ranks{n}")
            cmd = ([mpiexec, "-n", "2"] if n == 2 else []) + [
                sys.executable, "-m", "minembed", "train", "-o", out, "-q", "--dim", "64",
                "--max-steps", steps]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, res.stderr[-2000:]
            with open(os.path.join(out, "log.jsonl")) as f:
                curves[n] = np.array([json.loads(line)["loss"] for line in f])
        print("\nminembed train on 1 process, and mpiexec -n 2 minembed train "
              "(batch 128 = 2 x 64):")
        for s in range(0, len(curves[1]), max(1, len(curves[1]) // 6)):
            print(f"  step {s + 1:3d}   loss {curves[1][s]:.6f}   {curves[2][s]:.6f}")
        rel = float(np.max(np.abs(curves[1] - curves[2]) / curves[1]))
        print(f"  largest relative difference of the loss curves: {rel:.1e} (float32 sums in "
              "another order)")
        assert rel < 1e-5

# ---------------------------------------------------------------------------
# 4. Gradient caching: a transformer step in micro-batches of M pairs
# ---------------------------------------------------------------------------
B, M = (32, 8) if FAST else (128, 16)
cfg = TrainConfig(model="transformer", dim=64, layers=2, heads=4, ffn=256, max_len=64, batch_size=B,
                  vocab_size=8192).resolved()
tf = encoder_module("transformer")
enc_cfg = cfg.encoder_config(tok.get_vocab_size())
params = tf.init_params(enc_cfg, np.random.default_rng(0))
sampler = PairSampler(source.tokenized(tok), cfg)
results = {}
for m in (0, M):
    rng = np.random.default_rng([0, 2, 1])
    ids, offsets = sampler.sample(sampler.usable[:B], rng)
    tracemalloc.start()
    loss, _, grads = make_step(micro_batch=m)(tf, params, enc_cfg, ids, offsets, cfg, rng)
    results[m] = loss, grads, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
(l0, g0, peak0), (l1, g1, peak1) = results[0], results[M]
dense = {k: (lambda g: g.values if isinstance(g, RowGrad) else g) for k in g0}
err = max(float(np.abs(dense[k](g0[k]) - dense[k](g1[k])).max() / np.abs(dense[k](g0[k])).max())
          for k in g0)
print(f"\ntransformer, {B} pairs (dropout 0.1): whole batch loss {l0:.6f}, peak {peak0 / 1e6:.0f} "
      f"MB of arrays;\n  micro-batches of {M}: loss {l1:.6f}, peak {peak1 / 1e6:.0f} MB; gradients "
      f"agree to {err:.1e} (relative to each one's largest entry)")
assert abs(l0 - l1) < 1e-6 * l0 and err < 1e-4 and peak1 < 0.6 * peak0

print("\nlesson 10 OK")
