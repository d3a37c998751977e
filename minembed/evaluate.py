"""Evaluation, the paper's protocol: kNN accuracy (k = 10) on a random 90/10
split of the labelled documents, with Euclidean and cosine distance; a linear
probe (standardise, logistic regression) on the same split; and the TF-IDF
baselines the paper compares against.
"""
import numpy as np

from .errors import MinembedError

K = 10
TEST_SIZE = 0.1
SPLIT_SEED = 42


def labelled_corpus(corpus=None, fmt="auto", max_doc_chars=None, purpose="evaluation"):
    """(texts, labels) of a labelled corpus file, or of the built-in corpus (None).
    A file without labels is a MinembedError naming ``purpose``."""
    if corpus is None:
        from .datasets import docstrings
        texts, labels = docstrings()
        return list(texts), list(labels)
    from .corpus import MAX_DOC_CHARS, read_corpus
    texts, labels = read_corpus(corpus, fmt, max_doc_chars or MAX_DOC_CHARS)
    if labels is None:
        raise MinembedError(f"{corpus} has no labels: {purpose} needs a .jsonl corpus with a "
                            f'"label" field on every line')
    return texts, labels


def split(n, test_size=TEST_SIZE, seed=SPLIT_SEED):
    """Indices (train, test) of a random split, fixed by the seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_size * n)))
    return perm[n_test:], perm[:n_test]


def _check(X, labels):
    labels = np.asarray(labels)
    n = X.shape[0]  # not len(X): sparse TF-IDF matrices have no len
    if len(labels) != n:
        raise MinembedError(f"{n} embeddings but {len(labels)} labels")
    if len(labels) < 2 * K:
        raise MinembedError(f"evaluation needs at least {2 * K} labelled documents, got {len(labels)}")
    return labels


def knn_accuracy(X, labels, k=K, metric="euclidean", test_size=TEST_SIZE, seed=SPLIT_SEED):
    """Accuracy of a k-nearest-neighbour classifier fit on the train part, scored on the test part."""
    from sklearn.neighbors import KNeighborsClassifier

    labels = _check(X, labels)
    if not hasattr(X, "tocsr"):  # dense embeddings (TF-IDF stays sparse)
        X = np.asarray(X, dtype=np.float32)
    tr, te = split(len(labels), test_size, seed)
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
    knn.fit(X[tr], labels[tr])
    return float((knn.predict(X[te]) == labels[te]).mean())


def linear_probe_accuracy(X, labels, test_size=TEST_SIZE, seed=SPLIT_SEED, max_iter=1000):
    """Standardise, then multinomial logistic regression; accuracy on the test part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = _check(X, labels)
    tr, te = split(len(labels), test_size, seed)
    scaler = StandardScaler().fit(X[tr])
    clf = LogisticRegression(max_iter=max_iter)
    clf.fit(scaler.transform(X[tr]), labels[tr])
    return float((clf.predict(scaler.transform(X[te])) == labels[te]).mean())


def knn_scores(X, labels):
    """kNN accuracy with both distances, as the CLI and the comparison print them."""
    return {"knn_euclidean": knn_accuracy(X, labels, metric="euclidean"),
            "knn_cosine": knn_accuracy(X, labels, metric="cosine")}


def tfidf(texts, svd_dim=None, l2=False, seed=0):
    """TF-IDF (sublinear tf) document vectors; optionally truncated SVD to svd_dim
    dimensions and L2 normalisation (the paper's strongest baseline: 100, L2)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    X = TfidfVectorizer(sublinear_tf=True, min_df=2 if len(texts) > 50 else 1).fit_transform(texts)
    if svd_dim:
        X = TruncatedSVD(n_components=min(svd_dim, X.shape[1] - 1), random_state=seed).fit_transform(X)
        if l2:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def evaluate_model(model, texts, labels, batch_size=256):
    """kNN accuracies of a Model's embeddings of the texts."""
    return knn_scores(model.encode(texts, batch_size=batch_size), labels)
