"""Evaluation. With labels, the paper's protocol: kNN accuracy (k = 10) on random
90/10 splits, Euclidean and cosine distance, a linear probe, the TF-IDF
baselines and the majority class. Without labels (any corpus): retrieval of a
held-out crop, which measures what training optimises -- cut a span out of each
document, embed the span and the rest of every document, and see whether the
span's nearest rest is its own document (Recall@1, Recall@10, mean reciprocal
rank).
"""
import sys

import numpy as np

from ..errors import MinembedError

K = 10
TEST_SIZE = 0.1
SPLIT_SEED = 42


def split(n, test_size=TEST_SIZE, seed=SPLIT_SEED):
    """Indices (train, test) of a random split, fixed by the seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_size * n)))
    return perm[n_test:], perm[:n_test]


def _check(X, labels):
    labels = np.asarray(labels)
    if len(labels) != X.shape[0]:  # not len(X): sparse TF-IDF matrices have no len
        raise MinembedError(f"{X.shape[0]} embeddings but {len(labels)} labels")
    if len(labels) < 2 * K:
        raise MinembedError(f"evaluation needs at least {2 * K} labelled documents, got "
                            f"{len(labels)}")
    return labels


def knn_accuracy(X, labels, k=K, metric="euclidean", test_size=TEST_SIZE, seed=SPLIT_SEED):
    """Accuracy of a k-nearest-neighbour classifier fit on the train part, scored on the test
    part."""
    from sklearn.neighbors import KNeighborsClassifier
    labels = _check(X, labels)
    X = X.tocsr() if hasattr(X, "tocsr") else np.asarray(X, dtype=np.float32)
    tr, te = split(len(labels), test_size, seed)
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric,
                               algorithm="brute").fit(X[tr], labels[tr])
    return float((knn.predict(X[te]) == labels[te]).mean())


def linear_probe_accuracy(X, labels, test_size=TEST_SIZE, seed=SPLIT_SEED, max_iter=1000):
    """Standardise (sparse: scale only), then multinomial logistic regression; test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    labels = _check(X, labels)
    sparse = hasattr(X, "tocsr")
    X = X.tocsr() if sparse else X
    tr, te = split(len(labels), test_size, seed)
    scaler = StandardScaler(with_mean=not sparse).fit(X[tr])
    clf = LogisticRegression(max_iter=300 if sparse else max_iter).fit(scaler.transform(X[tr]),
                                                                       labels[tr])
    return float((clf.predict(scaler.transform(X[te])) == labels[te]).mean())


def majority_accuracy(labels, test_size=TEST_SIZE, seed=SPLIT_SEED):
    """Accuracy of always answering the most frequent label of the train part."""
    labels = np.asarray(labels)
    tr, te = split(len(labels), test_size, seed)
    values, counts = np.unique(labels[tr], return_counts=True)
    return float((labels[te] == values[np.argmax(counts)]).mean())


def knn_scores(X, labels, splits=1):
    """kNN accuracy with both distances: one split (the fixed seed) or the mean and
    sd over ``splits`` random splits (seeds 0..splits-1)."""
    out = {}
    for name, metric in (("knn_euclidean", "euclidean"), ("knn_cosine", "cosine")):
        if splits == 1:
            out[name] = knn_accuracy(X, labels, metric=metric)
        else:
            accs = [knn_accuracy(X, labels, metric=metric, seed=s) for s in range(splits)]
            out[name], out[name + "_sd"] = float(np.mean(accs)), float(np.std(accs))
    return out


def tfidf(texts, svd_dim=None, l2=False, seed=0):
    """TF-IDF (sublinear tf) document vectors; optionally truncated SVD to svd_dim
    dimensions and L2 normalisation (the paper's strongest baseline: 100, L2)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    X = TfidfVectorizer(sublinear_tf=True, min_df=2 if len(texts) > 50 else 1).fit_transform(texts)
    if svd_dim:
        X = TruncatedSVD(n_components=min(svd_dim, X.shape[1] - 1),
                         random_state=seed).fit_transform(X)
        if l2:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


# ---------------------------------------------------------------------------
# retrieval of held-out crops (no labels needed)

def held_out_crops(texts, frac=0.25, min_words=8, seed=0, min_crop=3):
    """(doc index, crop, rest) for each document of at least ``min_words`` words:
    the crop is a random run of ~frac of its words (at least ``min_crop``), the rest is the
    document without it."""
    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(texts):
        words = t.split()
        if len(words) < min_words:
            continue
        n = max(min_crop, int(round(frac * len(words))))
        s = int(rng.integers(0, len(words) - n + 1))
        out.append((i, " ".join(words[s:s + n]), " ".join(words[:s] + words[s + n:])))
    return out


def retrieval_task(texts, seed=0):
    """The held-out crops retrieval is scored on, and what they are: a quarter of the words (at
    least 3) of each document of 8 words or more when those are at least half the corpus; on a
    corpus of short texts (titles, one-line summaries), a quarter (at least one word) of each
    document of 2 words or more."""
    triples = held_out_crops(texts, seed=seed)
    if len(triples) >= max(2, len(texts) / 2):
        return triples, "a quarter of each document's words"
    return (held_out_crops(texts, min_words=2, seed=seed, min_crop=1),
            "short documents: a quarter of each one's words, at least one")


def retrieval_scores(Q, D):
    """Query i's relevant document is row i of D (both L2-normalised, or sparse
    TF-IDF rows): Recall@1, Recall@10 and mean reciprocal rank, by cosine."""
    rank = np.empty(Q.shape[0], np.int64)
    for a in range(0, Q.shape[0], 2048):                 # (2048, N) similarities at a time
        S = Q[a:a + 2048] @ D.T
        S = S.toarray() if hasattr(S, "toarray") else np.asarray(S)
        own = S[np.arange(len(S)), np.arange(a, a + len(S))]
        rank[a:a + len(S)] = 1 + (S > own[:, None]).sum(axis=1)  # ties count in the query's favour
    return {"recall@1": float((rank <= 1).mean()), "recall@10": float((rank <= 10).mean()),
            "mrr": float((1.0 / rank).mean())}


def retrieval(texts, embeds, seed=0):
    """Held-out crop retrieval with each of ``embeds`` ({name: embed(list of texts) -> (N, d)
    unit rows}), and TF-IDF's on the same task (fit on the rests: sublinear tf, L2 rows):
    {name, ..., "tfidf", "crops"}, or {"skipped": why} when fewer than 2 documents have 2 words."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    triples, what = retrieval_task(texts, seed)
    if len(triples) < 2:
        return {"skipped": f"retrieval skipped: {len(triples)} document(s) of 2 words or more"}
    crops, rests = [c for _, c, _ in triples], [r for _, _, r in triples]
    vec = TfidfVectorizer(sublinear_tf=True).fit(rests)
    out = {name: dict(retrieval_scores(embed(crops), embed(rests)), documents=len(triples))
           for name, embed in embeds.items()}
    return dict(out, tfidf=dict(retrieval_scores(vec.transform(crops), vec.transform(rests)),
                                documents=len(triples)), crops=what)


# ---------------------------------------------------------------------------
# what minembed eval reports

def evaluate(model, texts, labels=None, splits=1, quiet=False):
    """kNN accuracy (with labels) of the model, its untrained start, TF-IDF, TF-IDF -> SVD(100)
    -> L2 and the majority class; and held-out crop retrieval of the model and TF-IDF. A dict
    (minembed eval --json); progress on stderr unless ``quiet``: a line as each part starts."""
    from .model import untrained
    from .progress import Progress

    def say(msg):
        if not quiet:
            print(f"eval: {msg}", file=sys.stderr, flush=True)

    def embed(m, docs, what):
        bar = Progress(len(docs), f"embedding {what}", "document", quiet=quiet)
        X = m.encode(docs, progress=bar.update)
        bar.close()
        return X

    def knn(X, what):
        say(f"kNN accuracy of {what}" + (f" over {splits} splits" if splits > 1 else ""))
        return knn_scores(X, labels, splits)

    result = {"documents": len(texts), "k": K, "splits": splits}
    if labels is not None:
        rows = {"model": knn(embed(model, texts, "the corpus"), "the model"),
                "untrained": knn(embed(untrained(model), texts, "the corpus (untrained)"),
                                 "the untrained model"),
                "tfidf": knn(tfidf(texts), "TF-IDF"),
                "tfidf_svd_l2": knn(tfidf(texts, svd_dim=100, l2=True), "TF-IDF -> SVD(100) -> L2")}
        seeds = range(splits) if splits > 1 else [SPLIT_SEED]
        maj = [majority_accuracy(labels, seed=s) for s in seeds]
        rows["majority"] = {"knn_euclidean": float(np.mean(maj)), "knn_cosine": float(np.mean(maj))}
        result.update(labels=len(set(labels)), knn=rows)
    say("retrieval of held-out crops")
    result["retrieval"] = retrieval(texts, {"model": lambda d: embed(model, d, "crops and rests")})
    return result


def report_lines(result):
    """evaluate()'s result as the lines minembed eval prints."""
    lines = []
    if "knn" in result:
        splits = result["splits"]
        how = "90/10 split" if splits == 1 else f"mean ± sd over {splits} random 90/10 splits"
        lines += [f"{result['documents']:,} documents, {result['labels']} labels; kNN k={K}, {how}",
                  f"{'':16s} {'euclidean':>14s} {'cosine':>14s}"]
        for name, r in result["knn"].items():
            cells = [f"{100 * r[k]:.1f}"
                     + (f" ± {100 * r[k + '_sd']:.1f}" if k + "_sd" in r else "") + "%"
                     for k in ("knn_euclidean", "knn_cosine")]
            lines.append(f"{name:16s} {cells[0]:>14s} {cells[1]:>14s}")
    r = result["retrieval"]
    if "skipped" in r:
        return lines + [r["skipped"]]
    lines.append(f"retrieval of a held-out crop ({r['model']['documents']:,} documents; "
                 f"{r['crops']}): {'':4s} R@1    R@10   MRR")
    for name in ("model", "tfidf"):
        lines.append(f"  {name:10s} {100 * r[name]['recall@1']:6.1f}% "
                     f"{100 * r[name]['recall@10']:6.1f}% {r[name]['mrr']:6.3f}")
    return lines
