"""Label-free quality signals against kNN accuracy along training runs (issue 28).

    python benchmarks/signals.py run CORPUS CONFIG [--seed 0] [--at 0,0.05,...,1] [--out FILE]
    python benchmarks/signals.py analyse [FILE]     # default: benchmarks/results/trajectory.jsonl

``run`` trains the bag model as ``minembed train`` would (members in turn, member k with seed +
k), but with a held-out tenth of the documents (at most 1,500) left out of training, and keeps
each member's table at the fractions ``--at`` of its steps. For each fraction the members' tables
side by side are one model: its kNN accuracy (k = 10, cosine, 10 random 90/10 splits, every
document; labels from a .jsonl corpus) and the signals below on the held-out documents. The
untrained table and TF-IDF (its signals fit on the training documents, its kNN on all) are scored
once. One JSON line per state is appended to --out. CORPUS: a labelled .jsonl(.gz) corpus path or
``builtin``; CONFIG: a name in CONFIGS. MINEMBED_THREADS sets the BLAS threads.

``analyse`` prints, per run, the Spearman correlation of each signal with kNN over the run's
states and the kNN lost by keeping the state the signal ranks best, then whether each signal
orders model (last state) / untrained / TF-IDF as kNN does. benchmarks/results/trajectory.jsonl
holds the issue's runs (made before words became the bag model's tokens: tokens="subwords",
held_out=False; knn_untrained, knn_tfidf: the old baselines, untrained the mean of 3 subword and
3 word tables); on them no signal tells a harmful run (kNN falling) from a useful one.

The signals, on whitespace words of the held-out texts (the same task for a model, its untrained
table and TF-IDF):

  ret_rest     a crop of ~25 % of a document's words (at least one) retrieves the rest of its
               document among the held-out rests (no shared words): MRR
  ret_halves, ret_sub   MRR of a random half retrieving the other half (disjoint), and of a
               random 70 % of the words retrieving another random 70 % (overlapping)
  agree        Jaccard of the 10 nearest held-out documents of one half and of the other half
  align, unif  Wang & Isola's alignment (mean squared distance of the two halves) and uniformity
               (log mean exp(-2 d^2) over pairs of documents), on unit vectors
  erank        effective rank (exp of the entropy of the normalised singular values)
  hub          hubness: skewness of the k-occurrence counts of the 10-nearest-neighbour graph
  cloze_hit    the 10 nearest training documents of one half hold how many of the words of the
               other half (IDF-weighted share; both halves in turn)
  cloze_ll     the same as a mean log-likelihood gain per hidden word: log P(w | neighbours) -
               log P(w), P(w | neighbours) = (n_w + p_w) / (10 + 1), p_w: share of training docs
  tfidf_agree  Jaccard of each held-out document's 10 nearest with TF-IDF's 10 nearest
  held_loss, held_acc, train_loss, train_acc   InfoNCE of the training pairs of the held-out
               (and as many training) documents, and its in-batch accuracy (members' mean)
"""
import argparse
import collections
import dataclasses
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from minembed import Corpus, TrainConfig  # noqa: E402
from minembed.core import optim  # noqa: E402
from minembed.core.loss import infonce_forward  # noqa: E402
from minembed.core.pairs import PairSampler  # noqa: E402
from minembed.core.train import train_loop  # noqa: E402
from minembed.product.evaluate import knn_accuracy, tfidf  # noqa: E402
from minembed.product.model import Model, encoder_module, initial_params  # noqa: E402
from minembed.product.model import unknown_weighs_nothing  # noqa: E402
from minembed.product.runtime import tuned  # noqa: E402
from minembed.product.settings import auto_epochs  # noqa: E402
from minembed.product.tokenize import mask_token_id  # noqa: E402

K, SPLITS = 10, 10
RESULTS = os.path.join(HERE, "results", "trajectory.jsonl")
AT = "0,0.05,0.1,0.2,0.35,0.5,0.75,1"
# the configurations main can express; its runs were made with subword tokens, no
# held-out documents (the defaults then); "words": minembed train's tokens now
OLD = dict(tokens="subwords", held_out=False)
CONFIGS = {"default": OLD, "m1": dict(OLD, members=1), "m8": dict(OLD, members=8),
           **{f"lr{x:g}": dict(OLD, lr=x) for x in (0.03, 0.01)},
           **{f"scale{x:g}": dict(OLD, scale=x) for x in (5.0, 20.0)},
           **{f"b{x}": dict(OLD, batch_size=x) for x in (64, 256)},
           **{f"ep{x}": dict(OLD, epochs=x) for x in (5, 10, 40)},
           "v4k": dict(OLD, vocab_size=4096), "d512": dict(OLD, dim=512),
           "words": dict(OLD, tokens="words"), "words-m2": dict(OLD, tokens="words", members=2),
           "words-lr0.03": dict(OLD, tokens="words", lr=0.03),
           "words-scale20": dict(OLD, tokens="words", scale=20.0),
           "words-ep40": dict(OLD, tokens="words", epochs=40)}
LOWER_BETTER = {"held_loss", "align", "hub", "unif"}
NAMES = ["cloze_ll", "cloze_hit", "agree", "ret_sub", "ret_halves", "ret_rest", "tfidf_agree",
         "held_loss", "hub", "erank"]


# -- the signals ---------------------------------------------------------------------------------

def _unit(X):
    if hasattr(X, "toarray"):  # sparse TF-IDF rows: already L2-normalised by the vectoriser
        return X
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _subset(words, mask):
    return " ".join(x for x, k in zip(words, mask) if k)


def views(texts, seed=0):
    """Word-level views of each text of at least 2 words: {view: [str]}, the texts' indices."""
    rng = np.random.default_rng([seed, 77])
    out = {k: [] for k in ("crop", "rest", "ha", "hb", "sa", "sb", "full")}
    used = []
    for i, t in enumerate(texts):
        w = t.split()
        n = len(w)
        if n < 2:
            continue
        used.append(i)
        c = max(1, int(round(0.25 * n)))
        s = int(rng.integers(0, n - c + 1))
        out["crop"].append(" ".join(w[s:s + c]))
        out["rest"].append(" ".join(w[:s] + w[s + c:]))
        m = rng.random(n) < 0.5
        if m.all() or not m.any():
            m[rng.integers(n)] = not m[0]
        out["ha"].append(_subset(w, m))
        out["hb"].append(_subset(w, ~m))
        for key in ("sa", "sb"):
            m = rng.random(n) < 0.7
            if not m.any():
                m[rng.integers(n)] = True
            out[key].append(_subset(w, m))
        out["full"].append(t)
    return out, np.array(used)


def _sims(Q, D):
    S = Q @ D.T
    return S.toarray() if hasattr(S, "toarray") else np.asarray(S)


def mrr(Q, D):
    """Mean reciprocal rank of D[i] for query Q[i]; ties (zero TF-IDF rows) share the mean rank."""
    S = _sims(Q, D)
    own = np.diag(S)
    rank = 1 + (S > own[:, None]).sum(axis=1) + 0.5 * ((S == own[:, None]).sum(axis=1) - 1)
    return float((1.0 / rank).mean())


def topk(S, k=K, exclude_self=True):
    S = S.copy()
    if exclude_self:
        np.fill_diagonal(S, -np.inf)
    return np.argpartition(-S, k, axis=1)[:, :k]


def jaccard(A, B):
    return float(np.mean([len(set(a) & set(b)) / len(set(a) | set(b))
                          for a, b in zip(A.tolist(), B.tolist())]))


class Cloze:
    """The words of the training documents (binary), their shares, and the hidden halves' words."""

    def __init__(self, train_texts, v):
        from sklearn.feature_extraction.text import CountVectorizer
        self.cv = CountVectorizer(binary=True, lowercase=True)
        self.X = self.cv.fit_transform(train_texts).tocsr().astype(np.float32)  # (N, V)
        n = self.X.shape[0]
        df = np.asarray(self.X.sum(axis=0)).ravel()
        self.p = df / n
        self.idf = np.log((1 + n) / (1 + df)) + 1
        self.hidden = {k: self.cv.transform(v[k]).tocsr() for k in ("ha", "hb")}

    def score(self, nn, hidden):
        """(cloze_hit, cloze_ll); nn: (H, k) training documents; hidden: "ha" or "hb"."""
        import scipy.sparse as sp
        H, k = nn.shape
        A = sp.csr_matrix((np.ones(H * k, np.float32), nn.ravel(), np.arange(0, H * k + 1, k)),
                          shape=(H, self.X.shape[0]))
        C = (A @ self.X).tocsr()  # (H, V): neighbours holding each word
        Y = self.hidden[hidden]
        Y.sort_indices()
        ll, hit_num, hit_den = [], [], []
        for i in range(H):
            w = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
            if len(w) == 0:
                continue
            c = np.asarray(C[i, w].todense()).ravel()
            hit_num.append((self.idf[w] * (c > 0)).sum())
            hit_den.append(self.idf[w].sum())
            ll.append(np.mean(np.log((c + self.p[w]) / (k + 1)) - np.log(self.p[w])))
        return float(np.sum(hit_num) / np.sum(hit_den)), float(np.mean(ll))


def _geometry(E):
    """align, unif, erank of dense unit rows."""
    F = E["full"]
    i, j = np.random.default_rng(0).integers(0, len(F), (2, 20000))
    keep = i != j
    dd = ((F[i[keep]] - F[j[keep]]) ** 2).sum(axis=1)
    s = np.linalg.svd(F, compute_uv=False)
    p = s / s.sum()
    return {"align": float(((E["ha"] - E["hb"]) ** 2).sum(axis=1).mean()),
            "unif": float(np.log(np.mean(np.exp(-2 * dd)))),
            "erank": float(np.exp(-(p * np.log(p + 1e-30)).sum()))}


def signals(embed, v, tfidf_nn=None, pool=None, cloze=None):
    """({signal: value}, 10-NN of the held-out documents) of one method: ``embed(list of str) ->
    (n, d)`` rows (dense or sparse); ``pool``: its rows of the training documents, ``cloze``: a
    Cloze (both for the cloze signals)."""
    E = {k: _unit(embed(v[k])) for k in ("crop", "rest", "ha", "hb", "sa", "sb", "full")}
    out = {"ret_rest": mrr(E["crop"], E["rest"]), "ret_halves": mrr(E["ha"], E["hb"]),
           "ret_sub": mrr(E["sa"], E["sb"])}
    out["agree"] = jaccard(topk(_sims(E["ha"], E["full"])), topk(_sims(E["hb"], E["full"])))
    if not hasattr(E["full"], "toarray"):
        out.update(_geometry(E))
    nn = topk(_sims(E["full"], E["full"]))
    occ = np.bincount(nn.ravel(), minlength=len(nn)).astype(float)  # k-occurrence: hubness
    out["hub"] = float(((occ - occ.mean()) ** 3).mean() / max(occ.std(), 1e-12) ** 3)
    if tfidf_nn is not None:
        out["tfidf_agree"] = jaccard(nn, tfidf_nn)
    if pool is not None and cloze is not None:
        P = _unit(pool)
        sc = [cloze.score(topk(_sims(E[q], P), exclude_self=False), h)
              for q, h in (("ha", "hb"), ("hb", "ha"))]
        out.update(cloze_hit=float(np.mean([x[0] for x in sc])),
                   cloze_ll=float(np.mean([x[1] for x in sc])))
    return out, nn


# -- the trajectory ------------------------------------------------------------------------------

def knn10(X, labels):
    return round(float(np.mean([100 * knn_accuracy(X, labels, metric="cosine", seed=s)
                                for s in range(SPLITS)])), 2)


def heldout_split(n, seed=0):
    perm = np.random.default_rng([seed, 99]).permutation(n)
    h = min(1500, max(2, n // 10))
    return np.sort(perm[h:]), np.sort(perm[:h])


def pair_loss(encoder, table, enc_cfg, sampler, docs, cfg, seed=0):
    """Mean InfoNCE and in-batch accuracy of the training pairs of ``docs`` (whole batches)."""
    rng = np.random.default_rng([seed, 123])
    docs = np.asarray(docs)
    losses, accs = [], []
    for b in range(0, len(docs) - cfg.batch_size + 1, cfg.batch_size):
        ids, off = sampler.sample(docs[b:b + cfg.batch_size], rng)
        emb, _ = encoder.forward({"tok_emb": table}, ids, off, enc_cfg)
        h = emb.shape[0] // 2
        loss, acc, _ = infonce_forward(emb[:h], emb[h:], cfg.scale, False)
        losses.append(float(loss))
        accs.append(float(acc))
    return float(np.mean(losses)), float(np.mean(accs))


def setup(path, config, seed):
    """(source, texts, labels, cfg, tok, sampler, train_docs, held, T): the run as minembed
    train prepares it, its held-out tenth out of the pairs."""
    source = Corpus(path)
    texts, labels = source.labelled("kNN")
    cfg = TrainConfig(**dict(CONFIGS[config], seed=seed)).resolved()
    tok = source.tokenizer(cfg.vocab_size, None, cfg.tokens)
    data = source.tokenized(tok)
    assert len(data.doc_offsets) - 1 == len(texts), "documents and texts differ"
    sampler = PairSampler(data, cfg, mask_token_id(tok))
    train_docs, held = heldout_split(len(texts), seed)
    sampler.usable = np.intersect1d(sampler.usable, train_docs)
    cfg = dataclasses.replace(cfg, batch_size=min(cfg.batch_size, len(sampler.usable)))
    spe = sampler.steps_per_epoch(cfg.batch_size)
    if cfg.epochs is None:
        cfg = dataclasses.replace(cfg, epochs=auto_epochs("bag", spe, cfg.members))
    T = spe * cfg.epochs if not cfg.max_steps else min(spe * cfg.epochs, cfg.max_steps)
    return source, texts, labels, cfg, tok, sampler, train_docs, held, T


def train_members(cfg, tok, sampler, train_docs, held, T, at_steps):
    """{step: (table, [per member: (held loss, held acc, train loss, train acc)])}."""
    encoder = encoder_module("bag")
    member_cfg = dict(cfg.encoder_config(tok.get_vocab_size()), dim=cfg.dim // cfg.members)
    snaps = {s: ([], []) for s in at_steps}
    tr = sampler.usable[:len(held)]
    for k in range(cfg.members):
        params = encoder.init_params(member_cfg, np.random.default_rng([cfg.seed + k, 0]))
        mcfg = dataclasses.replace(cfg, seed=cfg.seed + k)

        def keep(step):
            t = params["tok_emb"]
            snaps[step][0].append(t.copy())
            snaps[step][1].append(pair_loss(encoder, t, member_cfg, sampler, held, mcfg)
                                  + pair_loss(encoder, t, member_cfg, sampler, tr, mcfg))

        if 0 in snaps:
            keep(0)
        train_loop(encoder, params, optim.adam_init(params), sampler, mcfg, member_cfg, T,
                   on_step=lambda step, r: keep(step) if step in snaps else None)
    return {s: (np.concatenate(t, axis=1), ls) for s, (t, ls) in snaps.items()}


def baselines(texts, labels, train_docs, v, cfg, tok):
    """(fields of every record, TF-IDF's 10-NN, Cloze): TF-IDF and the untrained table scored."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    train_texts = [texts[i] for i in train_docs]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2).fit(train_texts)
    cloze = Cloze(train_texts, v)
    tf_sig, tf_nn = signals(vec.transform, v, pool=vec.transform(train_texts), cloze=cloze)
    full_cfg = cfg.encoder_config(tok.get_vocab_size())
    params = unknown_weighs_nothing(initial_params(full_cfg, cfg.seed, cfg.members), full_cfg, tok)
    un = Model(full_cfg, params, tok)
    un_sig, _ = signals(un.encode, v, tf_nn, pool=un.encode(train_texts), cloze=cloze)
    fields = dict(tfidf=tf_sig, untrained=un_sig, knn_untrained=knn10(un.encode(texts), labels),
                  knn_tfidf=knn10(tfidf(texts), labels))
    return fields, tf_nn, cloze


def run(args):
    path = None if args.corpus == "builtin" else args.corpus
    name = "builtin" if path is None else os.path.basename(path).split(".")[0]
    with tuned("bag"):
        source, texts, labels, cfg, tok, sampler, train_docs, held, T = \
            setup(path, args.config, args.seed)
        at_steps = sorted({int(round(float(f) * T)) for f in args.at.split(",")})
        t0 = time.perf_counter()
        snaps = train_members(cfg, tok, sampler, train_docs, held, T, at_steps)
        seconds = time.perf_counter() - t0
        v, _ = views([texts[i] for i in held])
        fields, tf_nn, cloze = baselines(texts, labels, train_docs, v, cfg, tok)
        base = dict(corpus=name, config=args.config + args.tag, seed=args.seed, tokens=cfg.tokens,
                    T=T, K=cfg.members, seconds=round(seconds, 1), heldout=len(held), **fields)
        full_cfg = cfg.encoder_config(tok.get_vocab_size())
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        for step in at_steps:
            table, losses = snaps[step]
            model = Model(full_cfg, unknown_weighs_nothing({"tok_emb": table}, full_cfg, tok), tok)
            X = model.encode(texts)
            s, _ = signals(model.encode, v, tf_nn, pool=X[train_docs], cloze=cloze)
            ls = np.array(losses)  # (K, 4): held loss, held acc, train loss, train acc
            s.update({n: float(x) for n, x in
                      zip(("held_loss", "held_acc", "train_loss", "train_acc"), ls.mean(axis=0))})
            r = dict(base, step=step, frac=round(step / T, 3), knn=knn10(X, labels), signals=s)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{name} {r['config']} s{args.seed} step {step}/{T}: kNN {r['knn']:.1f} "
                  + " ".join(f"{n} {x:.3f}" for n, x in s.items()), flush=True)
    for m in ("tfidf", "untrained"):
        print(m, f"kNN {fields['knn_' + m]:.1f}", {n: round(x, 3) for n, x in fields[m].items()})


# -- the analysis --------------------------------------------------------------------------------

def load_runs(path):
    """{(corpus, config, seed): [states]} of the runs with the cloze signals, in file order."""
    runs = collections.OrderedDict()
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "cloze_ll" in r["signals"]:
                runs.setdefault((r["corpus"], r["config"], r["seed"]), []).append(r)
    return runs


def within_run(runs):
    from scipy.stats import spearmanr
    print("within-run Spearman (kNN lost by the signal's best state)")
    print(f"{'run':28s}" + "".join(f"{n:>16s}" for n in NAMES))
    for key, states in runs.items():
        knn = np.array([s["knn"] for s in states])
        cells = []
        for n in NAMES:
            x = np.array([s["signals"].get(n, np.nan) for s in states])
            if np.isnan(x).any():
                cells.append(f"{'–':>16s}")
                continue
            sgn = -1 if n in LOWER_BETTER else 1
            rho = spearmanr(sgn * x, knn).correlation
            lost = knn.max() - knn[np.argmax(sgn * x)]
            cells.append(f"{rho:+.2f} ({lost:4.1f})".rjust(16))
        print(f"{key[0] + ' ' + key[1]:28s}" + "".join(cells))


def across_methods(runs):
    print("\nacross methods: model (last state) / untrained / TF-IDF: kNN, then each signal")
    for key, states in runs.items():
        last = states[-1]
        knn = np.array([last["knn"], last.get("knn_untrained", np.nan),
                        last.get("knn_tfidf", np.nan)])
        row = f"{key[0] + ' ' + key[1]:28s} kNN {knn[0]:5.1f}/{knn[1]:5.1f}/{knn[2]:5.1f} "
        for n in ("cloze_ll", "cloze_hit", "agree", "ret_sub"):
            x = np.array([last["signals"][n], last["untrained"].get(n, np.nan),
                          last["tfidf"].get(n, np.nan)])
            ok = (np.argsort(np.argsort(-x)) == np.argsort(np.argsort(-knn))).all()
            row += f"| {n} {x[0]:.3f}/{x[1]:.3f}/{x[2]:.3f} {'OK' if ok else '--'} "
        print(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train, keeping snapshots; score kNN and the signals")
    r.add_argument("corpus", help="a labelled .jsonl(.gz) corpus, or builtin")
    r.add_argument("config", choices=sorted(CONFIGS))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--at", default=AT, help="fractions of each member's steps [%(default)s]")
    r.add_argument("--out", default=RESULTS, help="JSON lines appended here [%(default)s]")
    r.add_argument("--tag", default="", help="appended to the config's name in the records")
    a = sub.add_parser("analyse", help="the signals against kNN, per run")
    a.add_argument("file", nargs="?", default=RESULTS)
    args = ap.parse_args()
    if args.command == "run":
        run(args)
    else:
        runs = load_runs(args.file)
        within_run(runs)
        across_methods(runs)


if __name__ == "__main__":
    main()
