"""Lesson 4: the InfoNCE loss, its gradient, and what the temperature does.

What it teaches
    A batch holds B positive pairs (a_i, p_i). Every other positive in the
    batch is a negative for a_i ("in-batch negatives"). The loss asks each
    anchor to pick out its own positive among the B candidates:

        S_ij = cos(a_i, p_j) / tau                 (B, B) similarity logits
        L    = mean_i [ logsumexp_j S_ij - S_ii ]  cross-entropy, target = diagonal

    We compute it by hand and compare with ``minembed.core.loss``, derive the
    gradient, check it with finite differences, and see why the paper's
    tau = 0.05 (scale 20) works and tau = 0.5 or 5 do not.

What to look at
    - the loss of a batch where nothing is learned is exactly log B;
    - dL/dS = (P - I) / B, with P the row-wise softmax of S: each anchor is
      pulled towards its positive and pushed from every negative in
      proportion to how likely it currently confuses them;
    - a small tau puts almost all of the push on the hardest negatives.

Run:  python lessons/04_infonce.py          (add --fast for the quick version)
"""
import math
import os
import sys

import numpy as np

from minembed.core.gradcheck import check_grads
from minembed.core.loss import (infonce_backward, infonce_forward, l2_normalize_backward,
                                l2_normalize_forward)

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)

# ---------------------------------------------------------------------------
# 1. The forward by hand, on 4 pairs
# ---------------------------------------------------------------------------
B, D, scale = 4, 5, 20.0                         # scale = 1 / tau, tau = 0.05
a = rng.standard_normal((B, D))
p = a + 1.5 * rng.standard_normal((B, D))        # positives: noisy copies of the anchors

an = a / np.linalg.norm(a, axis=1, keepdims=True)
pn = p / np.linalg.norm(p, axis=1, keepdims=True)
S = scale * an @ pn.T                            # (B, B)
logZ = np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)   # logsumexp per row
L_hand = float(np.mean(logZ - np.diag(S)))
L, accuracy, cache = infonce_forward(a, p, scale=scale)
print("S = cos(a_i, p_j) / tau:\n", S)
print(f"loss by hand {L_hand:.10f}, minembed.core.loss.infonce_forward {L:.10f}, "
      f"in-batch accuracy {accuracy:.2f}")
assert abs(L - L_hand) < 1e-10

# Two reference points:
# - nothing learned (every embedding the same): every S_ij equal, P uniform,
#   L = log B exactly; the loss starts near here;
same = np.ones((B, D))
assert abs(infonce_forward(same, same, scale)[0] - math.log(B)) < 1e-12
# - perfect (positives equal anchors, all anchors orthogonal): S_ii = 1/tau,
#   S_ij = 0, L = log(1 + (B - 1) e^(-1/tau)): not 0, but tiny for small tau.
eye = np.eye(B, D)
for s in (1.0, 20.0):
    assert abs(infonce_forward(eye, eye, s)[0] - math.log(1 + (B - 1) * math.exp(-s))) < 1e-12
print(f"reference points: log B = {math.log(B):.4f} (chance); "
      f"orthogonal and aligned: {math.log(1 + (B - 1) * math.exp(-scale)):.2e} at tau = 0.05, "
      f"{math.log(1 + (B - 1) * math.exp(-1.0)):.4f} at tau = 1")

# ---------------------------------------------------------------------------
# 2. The gradient, derived
#    Row i of the loss is l_i = logsumexp_j S_ij - S_ii, so
#        dl_i / dS_ij = softmax(S_i)_j - [i == j] = P_ij - I_ij
#    and with the mean over i:   dL/dS = (P - I) / B.
#    S = scale * an @ pn^T gives dL/dan = scale * dS @ pn, dL/dpn = scale * dS^T @ an.
#    Normalisation n = x / |x| gives dx = (dn - n (n . dn)) / |x|: the part of
#    dn along n is removed (stretching x does not change its direction).
# ---------------------------------------------------------------------------
P = np.exp(S - logZ[:, None])
dS = (P - np.eye(B)) / B
print("P = softmax over each row of S:\n", P)
print("dL/dS = (P - I) / B:\n", dS)
print("(a row the model already gets right has P_i ~ I_i and almost no gradient; a wrong one is\n"
      " pulled towards its positive and pushed from the negative it picked)")
dan = scale * dS @ pn
dpn = scale * dS.T @ an
da_hand = l2_normalize_backward(dan, l2_normalize_forward(a)[1])
dp_hand = l2_normalize_backward(dpn, l2_normalize_forward(p)[1])
da, dp = infonce_backward(1.0, cache)
assert np.allclose(da, da_hand, atol=1e-12) and np.allclose(dp, dp_hand, atol=1e-12)
# each row of dS sums to 0: as much pull towards the positive as push from the negatives
assert np.allclose(dS.sum(1), 0)
# the gradient of a row is orthogonal to that row: only directions matter
assert np.allclose((da * a).sum(1), 0, atol=1e-12)

# Finite differences, for both the one-directional and the symmetric (CLIP) loss
for symmetric in (False, True):
    def f():
        return infonce_forward(a, p, scale=scale, symmetric=symmetric)[0]
    _, _, c = infonce_forward(a, p, scale=scale, symmetric=symmetric)
    da, dp = infonce_backward(1.0, c)
    err = check_grads(f, {"a": a, "p": p}, {"a": da, "p": dp})
    print(f"finite differences, symmetric={symmetric}: relative errors "
          f"a {err['a']:.1e}, p {err['p']:.1e}")
    assert max(err.values()) < 1e-6

# ---------------------------------------------------------------------------
# 3. What the temperature does
#    A batch like one in training: B anchors, positives that are closer to their
#    anchor than the negatives are, and a few "hard" negatives (near-duplicates
#    of another anchor). For each tau: the loss, how sure the softmax is of the
#    positive (P_ii), and what share of the push from negatives goes to the
#    single hardest one (the largest off-diagonal P_ij of the row).
# ---------------------------------------------------------------------------
B, D = (64, 32) if FAST else (256, 64)
a = rng.standard_normal((B, D))
p = a + 1.0 * rng.standard_normal((B, D))
p[1::8] = a[0::8] + 0.9 * rng.standard_normal((len(a[0::8]), D))   # hard negatives for some anchors
print(f"\n{B} pairs of dimension {D}, chance loss log B = {math.log(B):.3f}")
print("   tau    loss   mean P_ii   push share of the hardest negative   |dL/da|")
shares = []
for tau in (5.0, 0.5, 0.05, 0.005):
    L, _, c = infonce_forward(a, p, scale=1 / tau)
    Pm = c["g"] + np.eye(B)              # the cache keeps g = P - I, dloss/dS times B
    neg = Pm * (1 - np.eye(B))
    share = float((neg.max(1) / neg.sum(1)).mean())
    da, _ = infonce_backward(1.0, c)
    shares.append(share)
    print(f"  {tau:5.3f}  {L:6.3f}  {np.diag(Pm).mean():9.3f}   {share:33.3f}   "
          f"{np.linalg.norm(da):.3e}")
print("   tau = 5: every negative is pushed about equally (share ~ 1/(B-1)), the loss barely")
print("   moves from log B, so there is little signal; tau = 0.05 (the paper's): the push goes")
print("   to the few negatives the model confuses with the positive; tau = 0.005: nearly all of")
print("   it goes to the single hardest one, and a pair that loses to it costs a very large loss.")
assert all(s1 < s2 for s1, s2 in zip(shares, shares[1:])), "smaller tau, harder negatives"
assert shares[0] < 2.0 / (B - 1)

print("\nlesson 4 OK")
