"""How far can any 256-number vector go where TF-IDF is ahead? (docs/quality.md, "Where TF-IDF
stays ahead")

    python benchmarks/quality.py --corpora /tmp/corpora --rows default,default-s1,default-s2 \\
        --work /tmp/minembed-quality
    python benchmarks/ceiling.py --corpora /tmp/corpora --only synopses,apisums,glosses \\
        --work /tmp/minembed-quality

For each corpus, kNN accuracy (k = 10, cosine, 10 splits, as benchmarks/quality.py) of:

* TF-IDF (sublinear tf, min_df 2), and random projections of it to 256, 512 and 1,024
  dimensions (Gaussian, fixed seed): what TF-IDF keeps when squeezed into a dense vector without
  learning anything;
* the default model of benchmarks/quality.py (rows default, default-s1, default-s2 of --work: the
  mean over the three seeds);
* the model's unit vectors side by side with TF-IDF's unit rows times beta (a hybrid of
  1 + beta^2 squared length): when no beta lifts the pair above TF-IDF alone, the model knows
  nothing about the labels that TF-IDF does not, and a better dense model could at best
  approach TF-IDF.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402  (knn10, corpora)
import minembed  # noqa: E402
from minembed.product.evaluate import K, split, tfidf  # noqa: E402

SEEDS = ("default", "default-s1", "default-s2")
BETAS = (0.5, 1.0, 2.0)


def unit(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def knn10_similar(S, labels):
    """quality.knn10 from a matrix of cosine similarities (the same splits, k and vote)."""
    from sklearn.neighbors import KNeighborsClassifier
    labels, accs = np.asarray(labels), []
    for seed in range(quality.SPLITS):
        tr, te = split(len(labels), seed=seed)
        knn = KNeighborsClassifier(n_neighbors=K, metric="precomputed", algorithm="brute")
        knn.fit(np.maximum(1 - S[np.ix_(tr, tr)], 0), labels[tr])
        accs.append(float((knn.predict(np.maximum(1 - S[np.ix_(te, tr)], 0)) == labels[te]).mean()))
    return float(np.mean(accs))


def ceiling(path, work, name):
    texts, labels = minembed.Corpus(path).labelled("quality")
    T = tfidf(texts)
    out = {"TF-IDF": quality.knn10(T, labels)[0]}
    for d in (256, 512, 1024):
        R = np.random.default_rng(0).standard_normal((T.shape[1], d)).astype(np.float32)
        out[f"TF-IDF, random projection to {d}"] = quality.knn10(unit(T @ R), labels)[0]
    G = (T @ T.T).toarray().astype(np.float32)  # TF-IDF's cosines (its rows are unit)
    rows = {}
    for row in SEEDS:
        X = unit(minembed.load(os.path.join(work, f"{name}-{row}")).encode(texts))
        rows.setdefault("model (default, 3 seeds)", []).append(quality.knn10(X, labels)[0])
        C = X @ X.T
        for beta in BETAS:  # [x, beta t]: cosine (x.x' + beta^2 t.t') / (1 + beta^2)
            rows.setdefault(f"model + {beta:g} x TF-IDF", []).append(
                knn10_similar((C + beta ** 2 * G) / (1 + beta ** 2), labels))
    out.update({k: float(np.mean(v)) for k, v in rows.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", help="directory of NAME.jsonl.gz labelled corpora")
    ap.add_argument("--only", help="comma-separated corpus names")
    ap.add_argument("--work", default="/tmp/minembed-quality",
                    help="benchmarks/quality.py's --work, with the default rows trained")
    args = ap.parse_args()
    chosen = quality.corpora(args.corpora)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results = {}
    for name, path in chosen.items():
        results[name] = ceiling(path, args.work, name)
        print(name, {k: round(100 * v, 1) for k, v in results[name].items()}, flush=True)
    names = list(next(iter(results.values())))
    print("| kNN cosine % (10 splits) | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for row in names:
        print(f"| {row} | " + " | ".join(f"{100 * r[row]:.1f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
