"""Lesson 5: training the bag model, and how good it gets.

What it teaches
    Lessons 2-4 put together: sample crop pairs, embed them with the bag
    encoder, InfoNCE, backward, Adam. First a few steps written out with the
    package's functions (what ``minembed.core.train``'s loop does each step:
    ``train_loop`` in minembed/core/train.py), then the real ``train()`` with
    kNN accuracy measured while it trains, compared with the untrained model
    and with the paper's strongest baseline, TF-IDF.

What to look at
    - the loss falls from near log B, the in-batch accuracy rises;
    - kNN accuracy (k = 10, labels = the package an object belongs to, never
      seen in training) rises above the untrained table's;
    - TF-IDF + SVD + L2 is a strong baseline on a small corpus (as in the paper,
      where it beats every self-supervised model).

Run:  python lessons/05_train_bag.py          (add --fast for the quick version)
"""
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

import minembed
from minembed import Corpus, TrainConfig, train
from minembed.core import bag, optim
from minembed.core.pairs import PairSampler
from minembed.core.train import train_step
from minembed.product.evaluate import knn_accuracy, tfidf
from minembed.product.model import untrained

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

VOCAB, DIM, EPOCHS = (2048, 64, 2) if FAST else (8192, 256, 10)
texts, labels = minembed.builtin()
labels = np.asarray(labels)
chance = np.bincount(np.unique(labels, return_inverse=True)[1]).max() / len(labels)

# ---------------------------------------------------------------------------
# 1. The training step, written out
#    loss, grads = InfoNCE(bag(anchors), bag(positives)) and its backward;
#    then Adam with a learning rate that would be absurd for a transformer
#    (the paper uses 0.5 for a bare embedding table; minembed's default is 0.1):
#    a row only moves when its token occurs in a batch, so each move must count.
#    The gradient is a descent direction: a small step along -grad lowers the
#    loss of the batch it was computed on (checked each step). Adam's first
#    steps move every touched coordinate by about lr, 5x the 0.02 init, and
#    can overshoot: why train() warms the learning rate up over the first steps.
# ---------------------------------------------------------------------------
source = Corpus()
tok = source.tokenizer(VOCAB)
tc = source.tokenized(tok)
sampler = PairSampler(tc, TrainConfig())
# one table (members=1); `minembed train` trains four narrower ones in turn, side by side
cfg = TrainConfig(model="bag", dim=DIM, epochs=EPOCHS, vocab_size=VOCAB, members=1).resolved()
BATCH = cfg.batch_size
enc_cfg = cfg.encoder_config(tok.get_vocab_size())
params = bag.init_params(enc_cfg, np.random.default_rng(0))
state = optim.adam_init(params)
rng = np.random.default_rng(0)
order = rng.permutation(sampler.usable)
print(f"by hand: {BATCH} pairs a step, dim {DIM}, lr {cfg.lr}, log B = {math.log(BATCH):.3f}")
print("   step   loss  small step along -grad  after the Adam step   in-batch acc")
losses = []
for step in range(6):
    ids, offsets = sampler.sample(order[step * BATCH:(step + 1) * BATCH], rng)
    loss, acc, grads = train_step(bag, params, enc_cfg, ids, offsets, cfg, rng)
    g = grads["tok_emb"]                           # RowGrad: the rows this batch used
    table = params["tok_emb"].copy()
    table[g.rows] -= 1e-3 * np.linalg.norm(table) / np.linalg.norm(g.values) * g.values
    small, _, _ = train_step(bag, {"tok_emb": table}, enc_cfg, ids, offsets, cfg, rng)
    lr = optim.lr_at(step + 1, 6, 2, cfg.lr)       # warm-up over 2 steps, then linear decay
    optim.adam_step(params, grads, state, lr=lr)   # lazy Adam: only the rows used move
    after, _, _ = train_step(bag, params, enc_cfg, ids, offsets, cfg, rng)   # same batch again
    losses.append(loss)
    print(f"   {step + 1:4d}  {loss:.3f}  {small:22.3f}  {after:19.3f}   {acc:.2f}"
          f"   (lr {lr:.3f}, {len(g.rows):,} rows updated)")
    assert small < loss, "a small step against the gradient must lower the loss of its batch"
assert losses[0] < math.log(BATCH), "crops of one document share tokens: better than chance at once"

# ---------------------------------------------------------------------------
# 2. The real thing: train(), with kNN accuracy every few steps
#    eval_fn gets the model as it is during training; its numbers go to the log.
# ---------------------------------------------------------------------------
def knn(model):
    return {"knn": knn_accuracy(model.encode(texts), labels, metric="cosine")}


steps_per_epoch = len(sampler.usable) // BATCH
with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "bag_model")
    t0 = time.perf_counter()
    model = train(None, out, cfg, quiet=True, eval_every=max(1, steps_per_epoch),
                  eval_fn=knn)
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    print(f"\ntrained {len(log)} steps ({EPOCHS} epochs of {steps_per_epoch}) in {seconds:.1f} s "
          f"into {out} (a temporary directory)")
knn0 = knn(untrained(model))["knn"]                # the weights train() started from
print(f"   step   loss   acc   kNN (cosine)\n      0                  {knn0:.3f}  (untrained)")
for r in log:
    if "knn" in r:
        print(f"   {r['step']:4d}  {r['loss']:.3f}  {r['acc']:.2f}  {r['knn']:.3f}")
first = np.mean([r["loss"] for r in log[:3]])
last = np.mean([r["loss"] for r in log[-3:]])
final = knn(model)["knn"]
assert last < first - 0.3, "the training loss must fall"
assert final > knn0 + (0.03 if FAST else 0.08), "training must beat the untrained table"
assert final > 3 * chance

# ---------------------------------------------------------------------------
# 3. The baseline: TF-IDF (sublinear tf) -> SVD to 100 dims -> L2
# ---------------------------------------------------------------------------
t0 = time.perf_counter()
X = tfidf(texts, svd_dim=100, l2=True)
base = knn_accuracy(X, labels, metric="cosine")
print(f"\nkNN accuracy on the {len(texts):,} documents (90/10 split, k = 10, cosine):")
print(f"   majority class             {chance:.3f}")
print(f"   untrained bag              {knn0:.3f}")
print(f"   bag + crops, {EPOCHS:2d} epochs     {final:.3f}")
print(f"   TF-IDF + SVD 100 + L2      {base:.3f}  ({time.perf_counter() - t0:.1f} s)")
print("   (the paper, 24k ICLR abstracts: bag + crops 57.3, TF-IDF+SVD+L2 62.4)")
assert base > 3 * chance

print("\nlesson 5 OK")
