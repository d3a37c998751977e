"""One transformer training step, ours (NumPy) vs PyTorch CPU eager.

    python benchmarks/bench_transformer.py [--steps 5] [--no-torch] [--profile]
                                           [--size issue|default] [--threads N]
                                           [--torch-threads N] [--load N]

Workload: B = 64 pairs = 128 views of 64-128 random tokens, vocab 30,000; --size issue (the
speed issue's, the default here): d 256, 4 layers, 4 heads, FFN 1024, views <= 128 tokens;
--size default: minembed train's transformer (2 layers, d 128, FFN 512, <= 64 tokens); dropout 0.1,
an InfoNCE loss on the pooled vectors (minembed.core.loss when present, else
sum(emb * R)), Adam (minembed.core.optim when present, lazy rows for tok_emb; else
an inline dense Adam). Times forward (+ loss), backward, Adam separately,
median over steps; encode throughput (train=False); peak RSS.

Ours runs alone first (so the peak RSS is ours), then ours and torch steps
alternate so that both see the same machine load; the table compares those.
PyTorch is eager ``nn.TransformerEncoderLayer`` (norm_first, tanh GELU), whose
attention is ``scaled_dot_product_attention`` (need_weights=False): its best
CPU variant. NumPy's BLAS gets minembed's thread count for the transformer
(the idle cores; --threads), PyTorch the idle cores too (--torch-threads);
--load N adds N busy processes. The floor: the step's FLOPs (linears and
attention products, counted from the batch's length buckets) over the GEMM
GFLOP/s measured here, in this process, with the same threads.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import common  # noqa: E402
from minembed.core import transformer as tr  # noqa: E402
from minembed.product.settings import TrainConfig  # noqa: E402

try:
    from minembed.core.loss import infonce_forward, infonce_backward
except ImportError:          # not written yet: sum(emb * R) stands in
    infonce_forward = infonce_backward = None
try:
    from minembed.core.optim import adam_init, adam_step
except ImportError:
    adam_init = adam_step = None

B, LO, HI, VOCAB = 64, 64, 128, 30_000


def make_batch(rng):
    lengths = rng.integers(LO, HI + 1, 2 * B)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    ids = rng.integers(0, VOCAB, offsets[-1]).astype(np.int32)
    return ids, offsets


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SIZES = {"issue": dict(dim=256, layers=4, heads=4, ffn=1024, max_len=128, dropout=0.1),
         "default": {k: v for k, v in TrainConfig(model="transformer").resolved().encoder_config(1)
                     .items() if k in ("dim", "layers", "heads", "ffn", "max_len", "dropout")}}
CFG = dict(SIZES["issue"])  # the size measured (main sets it from --size)


# ----------------------------------------------------------------------------- ours
class Ours:
    def __init__(self, seed=0, buckets=tr.BUCKETS):
        self.cfg = dict(CFG, vocab_size=VOCAB, buckets=buckets)
        self.params = tr.init_params(self.cfg, np.random.default_rng(seed))
        self.rng = np.random.default_rng(seed + 1)
        self.R = np.random.default_rng(seed + 2).standard_normal(
            (2 * B, self.cfg["dim"])).astype(np.float32)
        if adam_init is not None:
            self.state = adam_init(self.params)
        else:
            self.state = {"step": 0, "m": {k: np.zeros_like(p) for k, p in self.params.items()},
                          "v": {k: np.zeros_like(p) for k, p in self.params.items()}}

    def step(self, ids, offsets):
        t0 = time.perf_counter()
        emb, cache = tr.forward(self.params, ids, offsets, self.cfg, train=True, rng=self.rng)
        if infonce_forward is not None:
            loss, _, lcache = infonce_forward(emb[:B], emb[B:])
        else:
            loss = float((emb * self.R).sum())
        t1 = time.perf_counter()
        if infonce_backward is not None:
            da, dp = infonce_backward(1.0, lcache)
            demb = np.concatenate([da, dp]).astype(emb.dtype, copy=False)
        else:
            demb = self.R
        grads = tr.backward(demb, cache)
        del cache
        t2 = time.perf_counter()
        self.adam(grads, 1e-4)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, loss

    def adam(self, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
        if adam_step is not None:
            adam_step(self.params, grads, self.state, lr)        # lazy rows for tok_emb
            return
        self.state["step"] += 1                                   # inline dense Adam
        t = self.state["step"]
        for k, p in self.params.items():
            g = grads[k]
            if hasattr(g, "rows"):
                d = np.zeros_like(p)
                d[g.rows] = g.values
                g = d
            m, v = self.state["m"][k], self.state["v"][k]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)

    def encode(self, ids, offsets):
        return tr.forward(self.params, ids, offsets, self.cfg)[0]


# ----------------------------------------------------------------------------- torch
class Torch:
    def __init__(self, threads, seed=0):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        self.torch, self.F = torch, F
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        c = CFG

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.tok = nn.Embedding(VOCAB, c["dim"])
                self.pos = nn.Embedding(c["max_len"], c["dim"])
                layer = nn.TransformerEncoderLayer(
                    c["dim"], c["heads"], c["ffn"], c["dropout"],
                    activation=lambda x: F.gelu(x, approximate="tanh"),
                    batch_first=True, norm_first=True)
                self.enc = nn.TransformerEncoder(layer, c["layers"], norm=nn.LayerNorm(c["dim"]),
                                                 enable_nested_tensor=False)

            def forward(self, ids, pad):           # ids (N, T), pad (N, T) True on padding
                T = ids.shape[1]
                x = self.tok(ids) + self.pos.weight[:T]
                x = self.enc(x, src_key_padding_mask=pad)
                keep = (~pad).unsqueeze(-1).to(x.dtype)
                return (x * keep).sum(1) / keep.sum(1).clamp(min=1)

        self.model = Encoder()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def pad(self, ids, offsets):
        lengths = np.minimum(np.diff(offsets), CFG["max_len"])  # views cut as ours are
        T = int(lengths.max())
        mask = np.arange(T)[None, :] >= lengths[:, None]
        src = np.minimum(offsets[:-1, None] + np.arange(T)[None, :], len(ids) - 1)
        grid = np.where(mask, 0, ids[src]).astype(np.int64)
        return self.torch.from_numpy(grid), self.torch.from_numpy(mask)

    def step(self, ids, offsets):
        torch, F = self.torch, self.F
        self.model.train()
        t0 = time.perf_counter()
        grid, mask = self.pad(ids, offsets)
        emb = self.model(grid, mask)
        a, p = F.normalize(emb[:B], dim=1), F.normalize(emb[B:], dim=1)
        loss = F.cross_entropy(20.0 * a @ p.T, torch.arange(B))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, loss.item()

    def encode(self, ids, offsets):
        self.model.eval()
        with self.torch.inference_mode():
            return self.model(*self.pad(ids, offsets))


# ----------------------------------------------------------------------------- main
def median_steps(times):
    t = np.array(times)                        # (steps, 3): fwd, bwd, adam
    return np.median(t, axis=0), np.median(t.sum(1))


def encode_rate(model, batches):
    t0 = time.perf_counter()
    for ids, offsets in batches:
        model.encode(ids, offsets)
    return sum(len(o) - 1 for _, o in batches) / (time.perf_counter() - t0)


def step_flops(batches, cfg):
    """Median FLOPs of a training step: linears 6 M params (forward 2, backward 4), attention
    products 12 per view, head and layer: N_b T_b^2 D (q k^T and a v; backward twice that)."""
    D, F, L = cfg["dim"], cfg["ffn"], cfg["layers"]
    lin = 4 * D * D + 2 * D * F
    out = []
    for ids, offsets in batches:
        lay = tr.layout(ids, offsets, cfg["max_len"], cfg.get("buckets", tr.BUCKETS))
        att = sum(m.shape[0] * m.shape[1] ** 2 for _, m in lay["grids"]) * D
        out.append(L * (6 * len(lay["ids"]) * lin + 12 * att))
    return float(np.median(out))


def gemm_gflops(M=12288, K=256, N=1024, reps=5):
    """float32 GEMM speed of NumPy's BLAS here (the shapes of the MLP's first linear), the best
    of ``reps`` (the floor: what the machine gives at best)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((M, K), dtype=np.float32),
            rng.standard_normal((K, N), dtype=np.float32))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * M * K * N / min(ts) / 1e9


def profile_ours(ours, batch):
    import cProfile
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    ours.step(*batch)
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(18)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--encode-batches", type=int, default=4)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--size", choices=SIZES, default="issue",
                    help="issue: d 256, 4 layers, <= 128 tokens; "
                         "default: minembed train's transformer")
    ap.add_argument("--buckets", default=str(tr.BUCKETS),
                    help="attention length buckets; a list (1,4) compares them side by side")
    common.add_options(ap)
    args = ap.parse_args()
    ours_threads, torch_threads = common.setup(args, "transformer")

    rng = np.random.default_rng(0)
    batches = [make_batch(rng) for _ in range(args.steps + 1)]
    enc_batches = batches[:args.encode_batches]
    CFG.update(SIZES[args.size])
    print(f"B={B} pairs ({2 * B} views), {LO}-{HI} tokens/view, vocab {VOCAB}, --size {args.size}: "
          f"{CFG}")
    print(common.machine(args, ours_threads, torch_threads))
    print(f"loss: {'minembed.core.loss.infonce' if infonce_forward else 'sum(emb*R)'}; "
          "adam: "
          f"{'minembed.core.optim.adam_step (lazy tok_emb rows)' if adam_step else 'inline dense'}")

    settings = [int(b) for b in args.buckets.split(",")]
    variants = {nb: Ours(buckets=nb) for nb in settings}
    ours = variants[settings[-1]]
    flops, gflops = step_flops(batches[1:], ours.cfg), gemm_gflops()
    print(f"{flops / 1e9:.0f} GFLOP a step; NumPy GEMM {gflops:.0f} GFLOP/s now ({ours_threads} "
          f"threads): {flops / gflops / 1e9:.2f} s")
    for o in variants.values():
        o.step(*batches[0])                                  # warm-up
    if args.profile:
        profile_ours(ours, batches[1])
    times = {nb: [] for nb in settings}
    for bt in batches[1:]:                                   # alternate the variants
        for nb, o in variants.items():
            times[nb].append(o.step(*bt)[:3])
    for nb, o in variants.items():
        (f, b, a), s = median_steps(times[nb])
        enc = encode_rate(o, enc_batches)
        print(f"ours alone, {nb} bucket(s): step {s:.3f} s (fwd {f:.3f} / bwd {b:.3f} / "
              f"adam {a:.3f}), encode {enc:.0f} texts/s")
    rss = peak_rss_mb()
    print(f"peak RSS (ours only so far): {rss:.0f} MB")
    for nb in settings[:-1]:
        del variants[nb]

    if args.no_torch:
        return
    try:
        theirs = Torch(torch_threads)
    except ImportError:
        print("torch not installed: skipping the PyTorch comparison")
        return
    theirs.step(*batches[0])
    t_o, t_t, cpu_o, cpu_t, rates = [], [], [], [], []
    for bt in batches[1:]:                                   # alternate: same machine load
        rates.append(gemm_gflops(reps=3))
        for who, t, cpu in ((ours, t_o, cpu_o), (theirs, t_t, cpu_t)):
            c = time.process_time()
            t.append(who.step(*bt)[:3])
            cpu.append(time.process_time() - c)
    enc_o, enc_t = [], []
    for _ in range(3):
        enc_o.append(encode_rate(ours, enc_batches))
        enc_t.append(encode_rate(theirs, enc_batches))
    (fo, bo, ao), so = median_steps(t_o)
    (ft, bt_, at), st = median_steps(t_t)
    eo, et = np.median(enc_o), np.median(enc_t)
    per = np.sum(t_o, axis=1) / np.sum(t_t, axis=1)
    floor = flops / np.median(rates) / 1e9
    print(f"\nside by side, median of {args.steps} alternating steps "
          f"({common.machine(args, ours_threads, torch_threads)})")
    print("| | step (s) | fwd (s) | bwd (s) | Adam (s) | CPU s a step | encode (texts/s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| minembed (NumPy) | {so:.3f} | {fo:.3f} | {bo:.3f} | {ao:.3f} | "
          f"{np.median(cpu_o):.2f} | {eo:.0f} |")
    print(f"| PyTorch eager, SDPA | {st:.3f} | {ft:.3f} | {bt_:.3f} | {at:.3f} | "
          f"{np.median(cpu_t):.2f} | {et:.0f} |")
    print(f"| ratio ours/torch | **{so / st:.2f}** | {fo / ft:.2f} | {bo / bt_:.2f} | "
          f"{ao / at:.2f} | {np.median(cpu_o) / np.median(cpu_t):.2f} | **{eo / et:.2f}** "
          "(throughput) |")
    print(f"step ratio per round: {', '.join(f'{r:.2f}' for r in per)}")
    print(f"floor: {flops / 1e9:.0f} GFLOP / {np.median(rates):.0f} GFLOP/s (NumPy GEMM, median of "
          f"the rounds) = {floor:.2f} s = {floor / so:.0%} of our step")
    print(f"peak RSS: ours alone {rss:.0f} MB; process after torch too {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
