"""One training step of the bag model, ours (NumPy) vs PyTorch CPU, and encoding throughput.

    python benchmarks/bench_bag.py [--quick] [--steps 30] [--ids zipf|uniform|both] [--no-torch]
                                   [--no-encode] [--threads N] [--torch-threads N] [--load N]

Workload (the issue's): B = 256 pairs = 512 ragged views of 32-64 token ids,
vocab V = 30,000, D = 256, InfoNCE (L2-normalise, scale 20, cross-entropy over
in-batch negatives), Adam. Token ids are drawn either uniformly or Zipf-like
(p(rank r) ~ 1 / (r + 10), rank = id as in a BPE vocabulary where frequent
pieces get small ids): real text is Zipf-like, which means fewer distinct
rows per batch (~6k of 16k tokens instead of ~12k).

Phases, each the median over steps:
  fwd    encoder forward (ids -> (2B, D) mean vectors)
  loss   ours: InfoNCE forward + backward (-> d emb); torch: InfoNCE forward only
  bwd    ours: the bag backward (d emb -> RowGrad); torch: loss.backward() (InfoNCE
         backward + EmbeddingBag backward)
  Adam   ours: minembed.core.optim.adam_step (lazy rows or dense); torch: opt.step()
         + zero_grad (dense: torch.optim.Adam on sparse=False; sparse:
         torch.optim.SparseAdam on sparse=True)
  step   the whole step

Ours and torch run interleaved (one step of each in turn, the order rotated
every round) so that all see the same machine load; compare ratios, not
absolute numbers. "/ best torch" is our step time over the faster PyTorch
variant's (sparse=True + SparseAdam on these workloads). NumPy's BLAS gets
minembed's thread count for the bag model (1; --threads), PyTorch the idle
cores (--torch-threads); --load N adds N busy processes. PyTorch is optional
(``pip install torch``); without it only our rows are printed.

Encoding: texts/s of ``Model.encode`` (tokenisation included) on 5-30-word
sentences and on the longest documents of the built-in corpus, with a tokenizer
trained on it, against the floor: the tokenizer alone (``encode_batch`` on
all the texts at once); and ids -> vectors alone (``bag.forward`` on
pre-tokenised batches of 256 texts) vs torch's EmbeddingBag forward.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import common  # noqa: E402
from minembed.core import bag, optim  # noqa: E402
from minembed.core.loss import infonce_backward, infonce_forward  # noqa: E402

B, LO, HI, V, D, SCALE, LR = 256, 32, 64, 30_000, 256, 20.0, 1e-3


def zipf_probs(vocab, shift=10.0):
    p = 1.0 / (np.arange(vocab) + shift)
    return p / p.sum()


def make_batch(rng, ids_dist):
    """2B views of LO..HI ids: (ids (M,) int32, offsets (2B+1,) int64)."""
    lengths = rng.integers(LO, HI + 1, 2 * B)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    m = int(offsets[-1])
    if ids_dist == "uniform":
        ids = rng.integers(0, V, m)
    else:  # inverse CDF of the Zipf-like law
        ids = np.searchsorted(_ZIPF_CDF, rng.random(m), side="right").clip(0, V - 1)
    return ids.astype(np.int32), offsets


_ZIPF_CDF = np.cumsum(zipf_probs(V))


# ----------------------------------------------------------------------------- ours
class Ours:
    def __init__(self, lazy, seed=0):
        self.lazy = lazy
        self.cfg = dict(model="bag", vocab_size=V, dim=D)
        self.params = bag.init_params(self.cfg, np.random.default_rng(seed))
        self.state = optim.adam_init(self.params)

    def step(self, ids, offsets):
        t0 = time.perf_counter()
        emb, cache = bag.forward(self.params, ids, offsets, self.cfg, train=True)
        t1 = time.perf_counter()
        loss, _, lcache = infonce_forward(emb[:B], emb[B:], scale=SCALE)
        da, dp = infonce_backward(1.0, lcache)
        demb = np.concatenate([da, dp])
        t2 = time.perf_counter()
        grads = bag.backward(demb, cache)
        t3 = time.perf_counter()
        optim.adam_step(self.params, grads, self.state, LR, lazy=self.lazy)
        t4 = time.perf_counter()
        assert emb.dtype == demb.dtype == np.float32, (emb.dtype, demb.dtype)
        return (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), loss


# ----------------------------------------------------------------------------- torch
class Torch:
    def __init__(self, torch, sparse, seed=0):
        self.torch, self.sparse = torch, sparse
        g = torch.Generator().manual_seed(seed)
        self.bag = torch.nn.EmbeddingBag(V, D, mode="mean", sparse=sparse)
        with torch.no_grad():
            self.bag.weight.copy_(torch.randn(V, D, generator=g) * 0.02)
        opt = torch.optim.SparseAdam if sparse else torch.optim.Adam
        self.opt = opt(self.bag.parameters(), lr=LR)
        self.labels = torch.arange(B)

    def step(self, ids, offsets):
        torch, F = self.torch, self.torch.nn.functional
        ids_t = torch.from_numpy(ids.astype(np.int64))
        off_t = torch.from_numpy(offsets[:-1])
        t0 = time.perf_counter()
        emb = self.bag(ids_t, off_t)
        t1 = time.perf_counter()
        e = F.normalize(emb, dim=1)
        s = SCALE * (e[:B] @ e[B:].T)
        loss = F.cross_entropy(s, self.labels)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), loss.item()


def copy_bandwidth(mb=64, reps=5):
    """GB/s of main memory, read + write, as np.copyto of a 64 MB array sees it (the best of
    reps)."""
    a = np.ones(mb * 2 ** 20 // 4, np.float32)
    b = np.empty_like(a)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t)
    return 2 * a.nbytes / min(ts) / 1e9


# ----------------------------------------------------------------------------- encode
def encode_bench(torch, reps, n_texts):
    from minembed import builtin as docstrings
    from minembed.product.model import Model
    from minembed.product.tokenize import encode_texts, split_sentences, train_tokenizer

    docs, _ = docstrings()
    t = time.perf_counter()
    tok = train_tokenizer(docs, vocab_size=V)
    t_tok = time.perf_counter() - t
    sents = [s for d in docs for s in split_sentences(d) if 5 <= len(s.split()) <= 30]
    texts = (sents * (n_texts // len(sents) + 1))[:n_texts]
    vocab = tok.get_vocab_size()
    cfg = dict(model="bag", vocab_size=vocab, dim=D)
    params = bag.init_params(cfg, np.random.default_rng(0))
    model = Model(cfg, params, tok)
    batches = [encode_texts(tok, texts[i:i + 256]) for i in range(0, len(texts), 256)]
    n_tok = sum(len(ids) for ids, _ in batches)
    long_docs = sorted(docs, key=len)[-max(200, n_texts // 20):]  # the longest documents
    n_long = sum(len(e) for e in tok.encode_batch(long_docs, add_special_tokens=False))
    print(f"encode: {len(texts):,} sentences of 5-30 words from the built-in corpus, "
          f"{n_tok / len(texts):.1f} tokens/text on average; the {len(long_docs):,} longest "
          f"documents, {n_long / len(long_docs):.0f} tokens/text; tokenizer vocab {vocab:,} "
          f"(trained in {t_tok:.1f} s)\n")

    def ours_ids():
        for ids, offsets in batches:
            bag.forward(params, ids, offsets, cfg)

    fns = {"sentences": {"floor: tokenizer alone (encode_batch)":
                         lambda: tok.encode_batch(texts, add_special_tokens=False),
                         "ours: Model.encode (with tokenisation)": lambda: model.encode(texts)},
           "documents": {"floor: tokenizer alone (encode_batch)":
                         lambda: tok.encode_batch(long_docs, add_special_tokens=False),
                         "ours: Model.encode (with tokenisation)": lambda: model.encode(long_docs)},
           "ids": {"ours: ids -> vectors (bag.forward)": ours_ids}}
    if torch is not None:
        eb = torch.nn.EmbeddingBag(vocab, D, mode="mean")
        tb = [(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(off[:-1]))
              for ids, off in batches]

        def torch_ids():
            with torch.no_grad():
                for ids, off in tb:
                    eb(ids, off).numpy()
        fns["ids"]["torch: ids -> vectors (EmbeddingBag)"] = torch_ids
    times = {(g, k): [] for g, d in fns.items() for k in d}
    for _ in range(reps):
        for g, d in fns.items():
            for k, f in d.items():
                t = time.perf_counter()
                f()
                times[g, k].append(time.perf_counter() - t)
    print("| encoding | texts | texts/s | / floor |\n|---|---|---:|---:|")
    for g, d in fns.items():
        n = len(long_docs) if g == "documents" else len(texts)
        floor = times.get((g, "floor: tokenizer alone (encode_batch)"))
        for k in d:
            rate = n / statistics.median(times[g, k])
            rel = (f"{statistics.median(floor) / statistics.median(times[g, k]):.2f}" if floor
                   else "")
            print(f"| {k} | {g} | {rate:,.0f} | {rel} |")
    print()


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, zipf ids only, small encode")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per runner")
    ap.add_argument("--ids", choices=["zipf", "uniform", "both"], default="both")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-encode", action="store_true")
    common.add_options(ap)
    args = ap.parse_args()
    steps = 8 if args.quick else args.steps
    dists = ["zipf"] if args.quick or args.ids == "zipf" else (
        ["uniform"] if args.ids == "uniform" else ["zipf", "uniform"])

    ours_threads, torch_threads = common.setup(args, "bag")
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(torch_threads)
        except ImportError:
            print("(PyTorch is not installed: `pip install torch` for the comparison; ours only)\n")
    print(f"NumPy {np.__version__}"
          + (f", PyTorch {torch.__version__}" if torch is not None else "")
          + f"; B = {B} pairs ({2 * B} views of {LO}-{HI} ids), V = {V:,}, D = {D}, "
          f"median of {steps} steps\n{common.machine(args, ours_threads, torch_threads)}\n")

    for dist in dists:
        runners = {"ours, lazy Adam (rows)": Ours(lazy=True), "ours, dense Adam": Ours(lazy=False)}
        if torch is not None:
            runners["torch EmbeddingBag + Adam (dense)"] = Torch(torch, sparse=False)
            runners["torch EmbeddingBag(sparse) + SparseAdam"] = Torch(torch, sparse=True)
        names = list(runners)
        rng = np.random.default_rng(1)
        times = {k: [] for k in names}
        rows, tokens = [], []
        for i in range(steps + 2):  # 2 warm-up steps
            ids, offsets = make_batch(rng, dist)
            rows.append(np.unique(ids).size)
            tokens.append(ids.size)
            for k in names[i % len(names):] + names[:i % len(names)]:
                t, _ = runners[k].step(ids, offsets)
                if i >= 2:
                    times[k].append(t)
        print(f"### {dist} ids: ~{int(np.median(tokens)):,} tokens, "
              f"~{int(np.median(rows)):,} distinct rows per batch (load average "
              f"{os.getloadavg()[0]:.1f})\n")
        print("| step (ms) | fwd | loss | bwd | Adam | **step** | / best torch |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
        med = {k: [statistics.median(x) * 1e3 for x in zip(*ts)] for k, ts in times.items()}
        best = min((m[4] for k, m in med.items() if k.startswith("torch")), default=None)
        for k in names:
            m = med[k]
            rel = f"{m[4] / best:.2f}" if best else "-"
            cells = " | ".join(f"{x:.1f}" for x in m[:4])
            print(f"| {k} | {cells} | **{m[4]:.1f}** | {rel} |")
        print()
        gbs, mb = copy_bandwidth(), 7 * np.median(rows) * D * 4 / 1e6
        print(f"Adam's floor (lazy): read p, m, v, g and write p, m, v of the rows once = {mb:.0f} "
              f"MB; at {gbs:.1f} GB/s (a 64 MB copy here, now) {mb / gbs:.1f} ms; measured "
              f"{med[names[0]][3]:.1f} ms\n")
        if best:  # the step ratio per round, to show the spread
            per = [a[4] / min(b[4], c[4]) for a, b, c in zip(
                times[names[0]], times[names[2]], times[names[3]])]
            q = np.percentile(per, [25, 50, 75])
            print(f"lazy step / best torch step, per round: median {q[1]:.2f} "
                  f"(quartiles {q[0]:.2f}-{q[2]:.2f})\n")
    if torch is not None:
        print("torch's loss column is the InfoNCE forward only; "
              "its bwd includes the InfoNCE backward.\n")

    if not args.no_encode:
        encode_bench(torch, reps=3 if args.quick else 7, n_texts=5_000 if args.quick else 20_000)


if __name__ == "__main__":
    main()
