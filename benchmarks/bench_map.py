"""Map: how long does ``minembed map`` take for a corpus of 100k documents on this machine?

Generates a labelled corpus of ``--docs`` documents (JSON lines; 30 topics, each a
bag of 60 made-up words, 24 of them shared with its two neighbours, 30 % of the words, the rest
common English words; 2-6 sentences, ~400 characters a document), trains a bag model
(dim 256) for ``--steps`` steps on it, then, in a fresh process, times each phase of
``minembed map MODEL CORPUS -o map.png -o map.html`` and reports the process's peak RSS:

    read      read the corpus (minembed.product.corpus.Corpus)
    embed     Model.encode (tokenise + mean of token embeddings)
    tsne      viz.tsne: L2-normalise, PCA to 50, openTSNE (FFT gradients, PCA init)
    knn       kNN accuracy for the title (k = 10, cosine, fixed 90/10 split)
    png       viz.plot_map (1000 x 800)
    html      viz.write_html (Plotly, WebGL past 10k points)

    python benchmarks/bench_map.py                    # 100k documents
    python benchmarks/bench_map.py --sklearn 10000    # also scikit-learn's t-SNE on 10k

Everything is deleted afterwards unless --keep. Not run in CI.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

COMMON = ("the a of and to in is was for with on that by as it this from be are at or "
          "an which not have has had were but all their one more can will other been into "
          "some there when also its two new first may only over such these many most").split()

CHILD = """
import json, os, resource, sys, time
import sklearn
from minembed import load
from minembed.product import viz
from minembed.product.corpus import Corpus
from minembed.product.evaluate import knn_accuracy
corpus, model_dir, out, sk = sys.argv[1:5]
T, R = {}, {}
def tick(name, t0):
    T[name] = round(time.perf_counter() - t0, 1)
    R[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(name, T[name], "s, peak RSS so far", R[name], "MB", file=sys.stderr, flush=True)
    return time.perf_counter()
t = time.perf_counter()
texts, labels = Corpus(corpus).read(); t = tick("read", t)
X = load(model_dir).encode(texts); t = tick("embed", t)
coords = viz.tsne(X); t = tick("tsne", t)
with sklearn.config_context(working_memory=128):  # as viz.map_corpus does
    acc = knn_accuracy(X, labels, metric="cosine")
t = tick("knn", t)
title = f"bench: {len(texts):,} documents, kNN accuracy {100 * acc:.1f} %"
viz.plot_map(coords, labels, out + "/map.png", title); t = tick("png", t)
viz.write_html(coords, texts, labels, out + "/map.html", title); t = tick("html", t)
res = {"documents": len(texts), "phases_s": T, "total_s": round(sum(T.values()), 1),
       "peak_rss_mb_after": R,
       "knn_map_2d": round(knn_accuracy(coords, labels), 3), "knn_cosine": round(acc, 3),
       "html_mb": round(os.path.getsize(out + "/map.html") / 1e6, 1),
       "png_kb": round(os.path.getsize(out + "/map.png") / 1e3),
       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
if int(sk):  # the same first sk documents by openTSNE, then by scikit-learn's t-SNE
    for name in ("openTSNE", "sklearn"):
        if name == "sklearn":
            sys.modules["openTSNE"] = None  # not importable: viz.tsne falls back
        t = time.perf_counter(); viz.tsne(X[:int(sk)])
        res[f"{name}_tsne_{sk}_s"] = round(time.perf_counter() - t, 1)
print("RESULT", json.dumps(res))
"""


def generate(path, n_docs, n_topics=30, seed=0):
    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "so", "du", "fa", "gi", "ho",
            "ju", "be", "ci", "do", "el", "ar", "in", "os", "um", "ex"]
    words = sorted({"".join(rng.choice(syll, size=rng.integers(2, 4))) for _ in range(4000)})
    words = list(rng.permutation(words))
    topics = []
    for t in range(n_topics):
        own = words[t * 36:(t + 1) * 36]
        shared = words[((t + 1) % n_topics) * 36:((t + 1) % n_topics) * 36 + 12] + \
            words[((t - 1) % n_topics) * 36 + 12:((t - 1) % n_topics) * 36 + 24]
        topics.append(own + shared)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            t = int(rng.integers(n_topics))
            sents = []
            for _ in range(int(rng.integers(2, 7))):
                k = int(rng.integers(8, 16))
                toks = np.where(rng.random(k) < 0.3, rng.choice(topics[t], size=k),
                                rng.choice(COMMON, size=k))
                sents.append(" ".join(toks).capitalize() + ".")
            f.write(json.dumps({"text": " ".join(sents), "label": f"topic{t:02d}"}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=400, help="training steps of the bag model")
    ap.add_argument("--sklearn", type=int, default=0,
                    help="also time scikit-learn's t-SNE on this many documents")
    ap.add_argument("--dir", default=None, help="where to work (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="minembed-map-", dir=args.dir)
    try:
        corpus, model = os.path.join(work, "corpus.jsonl"), os.path.join(work, "model")
        t0 = time.perf_counter()
        generate(corpus, args.docs)
        print(f"generated {args.docs:,} documents in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        env = dict(os.environ, MINEMBED_CACHE=os.path.join(work, "cache"))
        subprocess.run([sys.executable, "-m", "minembed", "train", corpus, "-o", model,
                        "--max-steps", str(args.steps), "-q"], env=env, check=True)
        load0 = os.getloadavg()[0]
        p = subprocess.run([sys.executable, "-c", CHILD, corpus, model, work, str(args.sklearn)],
                           env=env, stdout=subprocess.PIPE, text=True, check=True)
        res = json.loads(next(line for line in p.stdout.splitlines()
                              if line.startswith("RESULT"))[7:])
        res.update(cpus=os.cpu_count(), load_before=round(load0, 1),
                   load_after=round(os.getloadavg()[0], 1))
        print(json.dumps(res, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
