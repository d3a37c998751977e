"""Quality of minembed's encoders against TF-IDF, on several labelled corpora.

    python tools/corpora.py /tmp/corpora  # wordnet, fortunes, debian (docs/corpora.md)
    python benchmarks/quality.py --corpora /tmp/corpora -o docs/quality.md
    python benchmarks/quality.py --corpora /tmp/corpora --only fortunes --rows default,ep40

For each corpus (the built-in one and every NAME.jsonl.gz in --corpora) and each
row: train once on all texts (self-supervised: labels unused), embed every text,
and score kNN accuracy (k = 10, cosine) over 10 random 90/10 splits (seeds 0-9):
mean ± sd, with the training seconds. Trained models are kept in --work (default
/tmp/minembed-quality) and reused, so a rerun only trains what is new. The
numbers do not depend on the machine (every run is deterministic); the seconds do.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minembed  # noqa: E402
from minembed import Corpus, TrainConfig  # noqa: E402
from minembed.product.compare import CROPS  # noqa: E402  (the paper's pairs: two crops, spans of 10-50 %)
from minembed.product.evaluate import knn_accuracy, tfidf  # noqa: E402
from minembed.product.model import untrained  # noqa: E402
from minembed.product.run import train  # noqa: E402

SPLITS = 10
# row name -> (what it is, TrainConfig settings); "default" is `minembed train` as shipped
ROWS = {
    "default": ("bag: minembed train as shipped (four 64-wide tables side by side, 20 epochs each; "
                "a crop and the rest of its document, scale 10; words seen twice or more, 16k)",
                {}),
    "default-s1": ("  the default, training seed 1", dict(seed=1)),
    "default-s2": ("  the default, training seed 2", dict(seed=2)),
    "all-docs": ("  the default with --no-held-out (trained on every document)",
                 dict(held_out=False)),
    "all-docs-s1": ("  --no-held-out, training seed 1", dict(held_out=False, seed=1)),
    "all-docs-s2": ("  --no-held-out, training seed 2", dict(held_out=False, seed=2)),
    "v2": ("  the default until 2026-12-06: --tokens subwords (BPE, 16k) --no-held-out, "
           "--span-min 0.1 --span-max 0.3",
           dict(tokens="subwords", held_out=False)),
    "v2-s1": ("  the default until 2026-12-06, training seed 1",
              dict(tokens="subwords", held_out=False, seed=1)),
    "v2-s2": ("  the default until 2026-12-06, training seed 2",
              dict(tokens="subwords", held_out=False, seed=2)),
    "default-sublinear": ("  the default + --pooling sublinear", dict(pooling="sublinear")),
    "default-sublinear-s1": ("  the default + --pooling sublinear, training seed 1",
                             dict(pooling="sublinear", seed=1)),
    "default-sublinear-s2": ("  the default + --pooling sublinear, training seed 2",
                             dict(pooling="sublinear", seed=2)),
    "m4-ep10": ("  four members, 10 epochs each (the steps of one table's 40)", dict(epochs=10)),
    "m4-ep15": ("  four members, 15 epochs each", dict(epochs=15)),
    "m4-ep40": ("  four members, 40 epochs each", dict(epochs=40)),
    "m2-ep20": ("  two 128-wide members, 20 epochs each", dict(members=2, epochs=20)),
    "m8-ep40": ("  eight 32-wide members, 40 epochs each", dict(members=8, epochs=40)),
    "d64": ("  one 64-wide table (what each member is), 40 epochs", dict(members=1, dim=64)),
    "m4-d512": ("  --dim 512: four 128-wide members", dict(dim=512)),
    "m4-d512-s1": ("  --dim 512, training seed 1", dict(dim=512, seed=1)),
    "m4-d512-s2": ("  --dim 512, training seed 2", dict(dim=512, seed=2)),
    "m4-d512-sublinear": ("  --dim 512 --pooling sublinear", dict(dim=512, pooling="sublinear")),
    "m4-d512-sublinear-s1": ("  --dim 512 --pooling sublinear, training seed 1",
                             dict(dim=512, pooling="sublinear", seed=1)),
    "m4-d512-sublinear-s2": ("  --dim 512 --pooling sublinear, training seed 2",
                             dict(dim=512, pooling="sublinear", seed=2)),
    "m8-d512": ("  --members 8 --dim 512: eight 64-wide members", dict(members=8, dim=512)),
    "m6-d384": ("  --members 6 --dim 384: six 64-wide members", dict(members=6, dim=384)),
    # the rows below were measured when the default was one 256-wide table (--members 1): so
    # they still are
    "one": ("bag: one 256-wide table (--members 1; the default until 2026-12-05: 40 epochs)", {}),
    "crops": ("bag: two crops instead (the paper's pairs; spans of 10-50 %)", CROPS),
    "v0.1": ("bag: the 0.1 defaults (two crops, ~800 steps, scale 20, vocabulary 8k)",
             dict(CROPS, max_steps=800, epochs=100, scale=20, vocab_size=8192)),
    "ep40": ("  0.1 + 40 epochs", dict(CROPS, epochs=40, scale=20, vocab_size=8192)),
    "ep40-s10": ("  0.1 + 40 epochs + scale 10", dict(CROPS, epochs=40, scale=10, vocab_size=8192)),
    "ep40-s5": ("  0.1 + 40 epochs + scale 5", dict(CROPS, epochs=40, scale=5, vocab_size=8192)),
    "ep40-v32k": ("  0.1 + 40 epochs + vocabulary 32k",
                  dict(CROPS, epochs=40, scale=20, vocab_size=32768)),
    "ep40-d512": ("  0.1 + 40 epochs + dim 512",
                  dict(CROPS, epochs=40, scale=20, vocab_size=8192, dim=512)),
    "ep40-b256": ("  0.1 + 40 epochs + batch 256",
                  dict(CROPS, epochs=40, scale=20, vocab_size=8192, batch_size=256)),
    "ep40-spans3-8": ("  0.1 + 40 epochs + token spans of 30-80 %",
                      dict(CROPS, epochs=40, scale=20, vocab_size=8192, span_min=0.3,
                           span_max=0.8)),
    "ep40-s10-d512": ("  40 epochs + scale 10 + dim 512",
                      dict(CROPS, epochs=40, scale=10, vocab_size=8192, dim=512)),
    "ep40-s10-sp1-3": ("  40 epochs + scale 10 + token spans of 10-30 %",
                       dict(CROPS, epochs=40, scale=10, vocab_size=8192, span_min=0.1,
                            span_max=0.3)),
    "ep100-s10": ("  100 epochs + scale 10", dict(CROPS, epochs=100, scale=10, vocab_size=8192)),
    # with the crop-and-rest pairs (docs/quality.md, "Levers with the crop-and-rest pairs")
    "seed1": ("  one table, training seed 1", dict(seed=1)),
    "seed2": ("  one table, training seed 2", dict(seed=2)),
    "sym": ("  + InfoNCE both ways (--symmetric)", dict(symmetric=True)),
    "b64": ("  + batch 64 (40 epochs: twice the steps)", dict(batch_size=64)),
    "b256-ep80": ("  + batch 256, 80 epochs (the same steps)", dict(batch_size=256, epochs=80)),
    "d512": ("  + dim 512", dict(dim=512)),
    "d1024": ("  + dim 1024", dict(dim=1024)),
    "lr0.3": ("  + lr 0.3", dict(lr=0.3)),
    "lr0.03": ("  + lr 0.03", dict(lr=0.03)),
    "lr0.03-s1": ("  + lr 0.03, training seed 1", dict(lr=0.03, seed=1)),
    "lr0.03-s2": ("  + lr 0.03, training seed 2", dict(lr=0.03, seed=2)),
    "lr0.02": ("  + lr 0.02", dict(lr=0.02)),
    "lr0.01": ("  + lr 0.01", dict(lr=0.01)),
    "lr0.03-ep60": ("  + lr 0.03, 60 epochs", dict(lr=0.03, epochs=60)),
    "lr0.03-d512": ("  + lr 0.03, dim 512", dict(lr=0.03, dim=512)),
    "sublinear": ("  + --pooling sublinear (encoding: a token n times weighs 1 + log n)",
                  dict(pooling="sublinear")),
    "sublinear-s1": ("  + --pooling sublinear, training seed 1", dict(pooling="sublinear", seed=1)),
    "sublinear-s2": ("  + --pooling sublinear, training seed 2", dict(pooling="sublinear", seed=2)),
    "members2": ("  + --members 2 --dim 512 (256-wide tables of seeds 0 and 1 side by side)",
                 dict(members=2, dim=512)),
    "members3": ("  + --members 3 --dim 768 (seeds 0, 1, 2)", dict(members=3, dim=768)),
    "members3-sublinear": ("  + --members 3 --dim 768 --pooling sublinear",
                           dict(members=3, dim=768, pooling="sublinear")),
    "transformer": ("transformer: minembed train --model transformer (2 layers, d 128, a crop and "
                    "the rest, starting as a bag model trained first, lr 3e-5)",
                    dict(model="transformer")),
    "transformer-crops": ("transformer, two crops instead", dict(CROPS, model="transformer")),
    "transformer-scratch-crops": ("transformer, two crops, random token table",
                                  dict(CROPS, model="transformer", bag_init=False)),
    "transformer-dropout": ("transformer, dropout positives (SimCSE) instead of crops (random "
                            "table: compare with the row above)",
                            dict(CROPS, model="transformer", positives="dropout")),
}
# rows of the four-member default; the other bag rows: one table
FOUR = list(ROWS)[:list(ROWS).index("one")]
ROWS.update({k: (what, dict(s, members=s.get("members", 1))) for k, (what, s) in ROWS.items()
             if k not in FOUR and s.get("model", "bag") == "bag"})
# every row but the default's was measured with the subword tokenizer, every document trained
# on and token spans of 10-30 % (the defaults until 2026-12-06): so it still is
ROWS.update({k: (what, dict(s, tokens=s.get("tokens", "subwords"), held_out=False,
                            span_min=s.get("span_min", 0.1), span_max=s.get("span_max", 0.3)))
             for k, (what, s) in ROWS.items()
             if k not in {r + s for r in ("default", "all-docs") for s in ("", "-s1", "-s2")}})


def knn10(X, labels):
    accs = [knn_accuracy(X, labels, metric="cosine", seed=s) for s in range(SPLITS)]
    return float(np.mean(accs)), float(np.std(accs))


def corpora(directory):
    out = {"builtin": None}
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl.gz"))) if directory else []:
        out[os.path.basename(path).split(".")[0]] = path
    return out


def measure_peer(name, path, peer, texts, labels, work):
    """A peer method's row (benchmarks/peers.py), kept in --work as PEER.json and reused."""
    import peers  # only when asked: its libraries are the bench extra
    cache = os.path.join(work, f"{name}-peer-{peer}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    fn = peers.PEERS[peer][1]
    X, seconds = fn(texts, 0, corpus=path) if peer.startswith("static-") else fn(texts, 0)
    res = dict(knn=knn10(X, labels), seconds=round(seconds, 1))
    os.makedirs(work, exist_ok=True)
    with open(cache, "w") as f:
        json.dump(res, f)
    return res


def measure(name, path, rows, work, peer_rows=()):
    texts, labels = Corpus(path).labelled("quality")
    res = {}
    for what, X in (("TF-IDF", lambda: tfidf(texts)),
                    ("TF-IDF + SVD(100) + L2", lambda: tfidf(texts, 100, True)),
                    ("TF-IDF + SVD(256) + L2", lambda: tfidf(texts, 256, True))):
        t = time.perf_counter()
        E = X()
        seconds = round(time.perf_counter() - t, 1)  # the vectors' alone, not the 10 kNN splits
        res[what] = dict(knn=knn10(E, labels), seconds=seconds)
        print(name, what, res[what], flush=True)
    for row in rows:
        what, settings = ROWS[row]
        out = os.path.join(work, f"{name}-{row}")
        if not os.path.isfile(os.path.join(out, "manifest.json")):
            train(path, out, TrainConfig(**settings), quiet=True, force=True)
        model = minembed.load(out)
        res[row] = dict(knn=knn10(model.encode(texts), labels),
                        seconds=model.config["training"]["seconds"],
                        steps=model.config["training"]["steps"])
        if row.startswith("default") and row[len("default"):] in ("", "-s1", "-s2"):
            res["untrained" + row[len("default"):]] = dict(
                knn=knn10(untrained(model).encode(texts), labels), seconds=0.0)
        print(name, row, res[row], flush=True)
    for peer in peer_rows:
        res["peer:" + peer] = measure_peer(name, path, peer, texts, labels, work)
        print(name, peer, res["peer:" + peer], flush=True)
    return dict(documents=len(texts), labels=len(set(labels)), rows=res)


def markdown(results, command):
    peer_names = {}
    if any(k.startswith("peer:") for r in results.values() for k in r["rows"]):
        import peers
        peer_names = {"peer:" + k: v for k, v in peers.PEERS.items()}
    names = dict(ROWS, **peer_names, **{"TF-IDF": ("TF-IDF (sublinear tf)", None),
                          "TF-IDF + SVD(100) + L2": ("TF-IDF → SVD(100) → L2", None),
                          "TF-IDF + SVD(256) + L2": ("TF-IDF → SVD(256) → L2 (the bag model's "
                                                     "dimension)", None),
                          "untrained": ("untrained bag model (the default's random start)", None),
                          "untrained-s1": ("  untrained, seed 1", None),
                          "untrained-s2": ("  untrained, seed 2", None)})
    lines = [f"Command: `{command}`", ""]
    for corpus, r in results.items():
        lines += [f"### {corpus}: {r['documents']:,} documents, {r['labels']} labels", "",
                  "| row | kNN cosine % (10 splits) | steps | train s |", "|---|---|---|---|"]
        for key, v in r["rows"].items():
            m, sd = v["knn"]
            lines.append(f"| {names[key][0]} | {100 * m:.1f} ± {100 * sd:.1f} | "
                         f"{v.get('steps', '–')} | {v['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora",
                    help="directory of NAME.jsonl.gz labelled corpora (tools/corpora.py)")
    ap.add_argument("--only", help="comma-separated corpus names (builtin, wordnet, ...)")
    ap.add_argument("--rows", default="default", help=f"comma-separated rows: {', '.join(ROWS)}")
    ap.add_argument("--peers", default="",
                    help="comma-separated peer methods (benchmarks/peers.py: tfidf-min_df1, bm25, "
                         "doc2vec, word2vec-mean, word2vec-sif, fasttext, static-mnrl, ...) or "
                         "'all'; they need the bench extra")
    ap.add_argument("--work", default="/tmp/minembed-quality", help="where trained models are kept")
    ap.add_argument("-o", "--out", help="write the tables as Markdown (and .json beside)")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    peer_rows = [p for p in args.peers.split(",") if p]
    if peer_rows:
        import peers
        peer_rows = list(peers.PEERS) if peer_rows == ["all"] else peer_rows
        unknown = [p for p in peer_rows if p not in peers.PEERS]
        if unknown:
            ap.error(f"unknown peers {unknown}: {', '.join(peers.PEERS)}")
    chosen = corpora(args.corpora)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results = {name: measure(name, path, rows, args.work, peer_rows)
               for name, path in chosen.items()}
    if args.out:
        command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
        with open(args.out, "w") as f:
            f.write(markdown(results, command) + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
