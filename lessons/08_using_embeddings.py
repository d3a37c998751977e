"""Lesson 8: using the embedding: kNN evaluation, a map, and search.

What it teaches
    A trained model is a directory (config.json, tokenizer.json,
    model.safetensors, manifest.json, ...); ``minembed.load(dir).encode(texts)``
    gives one vector per text. This lesson trains a bag model (as in lesson 5),
    then
    - measures kNN accuracy with Euclidean and cosine distance, on raw and on
      unit-length vectors;
    - draws a t-SNE map of the corpus coloured by package, saved as a PNG;
    - searches the corpus for the documents nearest to a query.

What to look at
    - cosine distance and unit vectors: training only ever compared directions;
    - the map: packages form islands (scipy.special, scipy.stats, numpy.ma ...);
    - search hits for a query about sparse eigenvalues.

Outputs (the model directory, its search cache, map.png and the map's
coordinates) go to ``--out DIR`` when given, and stay there. Without it they
go to a temporary directory that the lesson removes when it ends: pass --out
to keep the map.

Run:  python lessons/08_using_embeddings.py [--out DIR]   (add --fast for the quick version)
"""
import os
import sys
import tempfile

import numpy as np

import minembed
from minembed import TrainConfig, train
from minembed.product.evaluate import knn_accuracy
from minembed.product.search import CorpusIndex
from minembed.product.viz import map_corpus

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"
# no --out: a temporary directory, removed at the end (on an error too: its finalizer runs
# when Python exits)
tmp = None if "--out" in sys.argv else tempfile.TemporaryDirectory(prefix="minembed-lesson8-")
OUT = tmp.name if tmp else sys.argv[sys.argv.index("--out") + 1]

texts, labels = minembed.builtin()
labels = np.asarray(labels)
model_dir = os.path.join(OUT, "bag_model")
cfg = TrainConfig(model="bag", dim=64 if FAST else 256, epochs=1 if FAST else 10,
                  vocab_size=2048 if FAST else 8192)
train(None, model_dir, cfg, quiet=True, force=True)
model = minembed.load(model_dir)                       # checks the manifest's checksums
print(f"trained a bag model into {model_dir}: {sorted(os.listdir(model_dir))}")

# ---------------------------------------------------------------------------
# 1. kNN accuracy: Euclidean vs cosine, raw vs unit vectors
#    |u - v|^2 = |u|^2 + |v|^2 - 2 u.v: on unit vectors Euclidean distance is
#    a function of cosine alone, so the two give the same neighbours.
# ---------------------------------------------------------------------------
raw = model.encode(texts, normalize=False)
unit = model.encode(texts)                             # trained models default to unit vectors
assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
rows = {(n, m): knn_accuracy(X, labels, metric=m) for n, X in (("raw", raw), ("unit", unit))
        for m in ("euclidean", "cosine")}
print("\nkNN accuracy (k = 10):          euclidean   cosine")
for n in ("raw", "unit"):
    print(f"   {n:4s} vectors                 {rows[n, 'euclidean']:.3f}     "
          f"{rows[n, 'cosine']:.3f}")
assert rows["unit", "euclidean"] == rows["unit", "cosine"] == rows["raw", "cosine"]
chance = np.bincount(np.unique(labels, return_inverse=True)[1]).max() / len(labels)
assert rows["unit", "cosine"] > 3 * chance

# ---------------------------------------------------------------------------
# 2. A map: L2-normalise, PCA to 50 dims, t-SNE to 2 (viz.tsne), draw as PNG
# ---------------------------------------------------------------------------
png = os.path.join(OUT, "map.png")
coords, map_labels, written = map_corpus(model, out=png, max_docs=150 if FAST else None)
print(f"\nt-SNE map of {len(coords):,} documents written to {png}")
print("   also:", ", ".join(written[1:]))
with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
assert coords.shape == (len(map_labels), 2) and np.isfinite(coords).all()
# documents of one package lie closer together on the map than documents of two
ml = np.asarray(map_labels)
dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
same_label = (ml[:, None] == ml[None]) & ~np.eye(len(ml), dtype=bool)
d_same, d_diff = dist[same_label].mean(), dist[ml[:, None] != ml[None]].mean()
print(f"   mean map distance: same package {d_same:.1f}, different packages {d_diff:.1f}")
assert d_same < (0.9 if FAST else 0.8) * d_diff

# ---------------------------------------------------------------------------
# 3. Search: cosine similarity between the query and every document
# ---------------------------------------------------------------------------
# embeds the corpus (cached next to the model)
index = CorpusIndex.build(model)
query = "eigenvalues of a sparse symmetric matrix"
print(f"\nsearch: {query!r}")
hits = index.search(query, k=5)
for h in hits:
    print(f"   {h.rank}. {h.score:.3f} [{h.label}] {h.text[:90]}...")
assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
# a document's own text finds itself first
probe = texts[100]
assert index.search(probe, k=1)[0].index == 100
# and a second index on the same model and corpus comes from the cache
assert CorpusIndex.build(model).from_cache

# top-1 neighbours (leaving the document itself out) share its label far more
# often than chance would give
S = index.embeddings @ index.embeddings.T
np.fill_diagonal(S, -np.inf)
same = float((labels[S.argmax(1)] == labels).mean())
print(f"\nthe nearest other document has the same label for {same:.1%} of the documents "
      f"(largest class: {chance:.1%})")
assert same > 3 * chance
if tmp:
    tmp.cleanup()
    print(f"\n{OUT} removed (run with --out DIR to keep the model and the map)")
else:
    print(f"\noutputs are in {OUT}")
print("\nlesson 8 OK")
