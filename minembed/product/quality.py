"""Is the trained model any good? Checked before a run saves it, and said when it ends.

``check_vitals``: a run whose weights or vectors are no longer finite and distinct (a learning
rate far too high makes weights of 1e30, whose squared norms overflow float32: every vector then
normalises to zero) is a failed run, not a model.

``held_out_documents`` / ``assess``: a run keeps a few documents out of training and, at its
end, scores the model on them against its untrained start and TF-IDF -- the retrieval of a
held-out crop of each (no labels needed; minembed eval's task) -- and, when the corpus has
labels, kNN accuracy on one 90/10 split. ``quality_line`` is the line ``minembed train`` ends
with. The label-free score says whether training taught the model the corpus's words; it cannot
tell a model whose neighbours are worse for the user's labels (docs/quality.md, "Never silently
worse"): only labels can, so give them when you have them.
"""
import itertools

import numpy as np

from ..errors import MinembedError
from .hook import failed
from .model import Model, untrained

VITALS_DOCS = 256  # documents encoded to check a model's vectors
# documents kept out of training: a share of those the pairs can use, at most MOST; none when
# that is fewer than FEWEST (under 2,500 usable documents). Small: a document trained on embeds
# better than one kept out, on short texts by enough to show (docs/quality.md, "Short texts").
HELD_OUT_SHARE, HELD_OUT_MOST, HELD_OUT_FEWEST = 0.02, 500, 50
KNN_DOCS = 10_000  # labelled documents (a random sample of them) the kNN accuracy is taken on


def check_vitals(model, source, lr):
    """Raise a failed run's error unless every weight is finite and the vectors of the first
    VITALS_DOCS documents of ``source`` (a Corpus) are finite, of unit length, and not all one."""
    bad = [k for k, v in model.params.items() if not np.isfinite(np.asarray(v)).all()]
    texts = list(itertools.islice(source.texts(), VITALS_DOCS))
    X = model.encode(texts) if not bad else None
    why = f"its weights {', '.join(bad)} are not finite" if bad else \
        "its vectors are not finite" if not np.isfinite(X).all() else \
        "its vectors have no length" if (np.linalg.norm(X, axis=1) < 0.5).mean() > 0.5 else \
        "its vectors are all the same" if _all_one(X) and not _all_one(
            untrained(model).encode(texts)) else None  # (not when the texts are: every word rare)
    if why is not None:
        weights = [np.asarray(v) for v in model.params.values()]
        largest = max(float(np.abs(w[np.isfinite(w)]).max(initial=0.0)) for w in weights)
        raise failed(f"training failed: {why} (finite weights up to {largest:.1e}); the learning "
                     f"rate {lr:g} is probably far too high (try a lower --lr); no model was saved")


def _all_one(X):
    return np.ptp(X, axis=0).max() < 1e-6


def held_out_documents(usable, seed):
    """The documents (indices, sorted) the run with this ``seed`` keeps out of training, drawn
    from ``usable`` (those the pairs can use). With --members K, member k keeps out those of seed
    + k (it is the run of that seed): every document is trained on by most members."""
    usable = np.asarray(usable)
    n = min(HELD_OUT_MOST, int(round(HELD_OUT_SHARE * len(usable))))
    if n < HELD_OUT_FEWEST:
        return usable[:0]
    return np.sort(np.random.default_rng([11, seed]).choice(usable, n, replace=False))


def assess(model, source, held, seed=0):
    """{"retrieval": {"documents", "members", "crops", "model", "untrained", "tfidf"} (MRR of
    each), and with labels "knn": {"documents", "model", "untrained", "tfidf"} (accuracy)} for a
    trained model; ``held``: the documents each of its members kept out (a list of index arrays
    into source.texts()), on which that member's table is scored, the means reported."""
    from .evaluate import knn_accuracy, tfidf
    start, out = untrained(model), {}
    r = _held_out_retrieval(model, start, source, held) if len(held) and len(held[0]) >= 2 \
        else None
    if r is not None:
        out["retrieval"] = r
    texts, labels = _labelled_sample(source, seed)
    if labels is not None:
        out["knn"] = {"documents": len(texts),
                      **{name: knn_accuracy(X, labels, metric="cosine") for name, X in
                         (("model", model.encode(texts)), ("untrained", start.encode(texts)),
                          ("tfidf", tfidf(texts)))}}
    return out


def _held_out_retrieval(model, start, source, held):
    """Each member's table (its columns, a bag model of its own) against its untrained start and
    TF-IDF on the documents it kept out: the mean MRRs."""
    from .evaluate import retrieval
    wanted = set(int(i) for h in held for i in h)
    text = {i: t for i, t in enumerate(source.texts()) if i in wanted}
    width, rows = model.dim // len(held), []
    for k, docs in enumerate(held):
        texts, cols = [text[int(i)] for i in docs], slice(k * width, (k + 1) * width)
        trained, base = (_member(m, cols, width) if len(held) > 1 else m for m in (model, start))
        r = retrieval(texts, {"model": trained.encode, "untrained": base.encode})
        if "skipped" in r:
            return None
        rows.append([r[name]["mrr"] for name in ("model", "untrained", "tfidf")])
    mean = np.mean(rows, axis=0)
    return {"documents": len(held[0]), "members": len(held), "crops": r["crops"],
            "model": float(mean[0]), "untrained": float(mean[1]), "tfidf": float(mean[2])}


def _member(model, cols, width):
    return Model(dict(model.config, dim=width), {"tok_emb": model.params["tok_emb"][:, cols]},
                 model.tokenizer)


def _labelled_sample(source, seed):
    """(texts, labels) of at most KNN_DOCS random documents, or (None, None) when the corpus has
    no labels (or not two, or one document without)."""
    try:
        texts, labels = source.read()
    except MinembedError:  # some documents without a label
        return None, None
    if labels is None or len(set(labels)) < 2:
        return None, None
    docs = list(zip(texts, labels))
    if len(docs) > KNN_DOCS:
        pick = np.sort(np.random.default_rng([seed, 12]).choice(len(docs), KNN_DOCS, replace=False))
        docs = [docs[i] for i in pick]
    return [t for t, _ in docs], [str(label) for _, label in docs]


def quality_line(q):
    """The line a run ends with (q: assess()'s result); a warning line after it when the model
    scores below its untrained start."""
    parts, worse = [], []
    r, k = q.get("retrieval"), q.get("knn")
    if r:
        who = f"each of its {r['members']} tables on the {r['documents']:,} documents it was not " \
            "trained on, the mean" if r.get("members", 1) > 1 else \
            f"{r['documents']:,} documents kept out of training"
        parts.append(f"held-out crop retrieval MRR {r['model']:.3f} (untrained {r['untrained']:.3f}"
                     f", TF-IDF {r['tfidf']:.3f}; {who})")
        if r["model"] < r["untrained"]:
            worse.append("held-out retrieval")
    if k:
        parts.append(f"kNN {100 * k['model']:.1f} % (untrained {100 * k['untrained']:.1f} %, "
                     f"TF-IDF {100 * k['tfidf']:.1f} %; labels of {k['documents']:,} documents)")
        if k["model"] < k["untrained"]:
            worse.append("kNN on the labels")
    if not parts:
        return f"quality: not measured (fewer than {HELD_OUT_FEWEST / HELD_OUT_SHARE:,.0f} " \
               "documents: too few to keep some out of training; minembed eval scores a model)"
    line = "quality: " + "; ".join(parts)
    if worse:
        line += ("\nwarning: the trained model scores below its untrained start on "
                 f"{' and '.join(worse)}: training made it worse for this corpus "
                 "(docs/quality.md, \"Never silently worse\"). Try fewer --epochs (it helps on "
                 "some such corpora), or TF-IDF (minembed eval compares them)")
    return line
