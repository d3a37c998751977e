"""A training step encoded in parts, for ``train_loop(step_fn=make_step(comm, micro_batch))``:
a rank's share of the batch (many processes, minembed/product/distributed.py) and micro-batches
(gradient caching: less memory, the same gradient).

R ranks, global batch B: every rank samples the whole batch (a function of seed and step),
encodes its B/R pairs and all-gathers the embeddings, so each anchor meets all B positives.
The gather's backward: with the loss split by rank, L = sum_q L_q (rank q's anchor rows),
dL/de_i = sum_q dL_q/de_i for each of rank r's rows, since its positives are negatives in
every rank's rows: a reduce-scatter (keeping dL_r/de_i alone is the classic bug). Here every
rank computes all of L on the gathered rows (B^2 D, small next to the encoders) and keeps its
rows of dL/de: the same numbers without that collective. Parameter gradients are sums over
views: an all-reduce adds the ranks' (``Comm.sum_grads``), and every rank takes the same Adam
step. Gradient caching (``micro_batch`` M): encode M pairs at a time keeping no caches, the
loss on all, then re-encode each chunk with caches and back-propagate its rows of dL/de.
Dropout: ``_Replay`` gives the forward of some views the uniforms the forward of the whole
batch drew for them, read at their places in the step's random stream, so ranks and chunks
get the single-process masks (GPU masks come from CuPy's generator: per rank and chunk).
"""
import numpy as np

from ..core import bag, transformer
from ..core.backend import to_device, to_numpy, xp_of
from ..core.layers import RowGrad
from ..core.loss import contrastive_loss
from ..core.pairs import gather_ranges
from ..core.train import loss_dims


def merge_rows(rows, values, V):
    """Rows with repeats -> a RowGrad over the distinct rows, repeats summed: the bag layer's
    scatter, with one-row views of weight 1 (d table[u] = sum of the values of row u)."""
    xp, n = xp_of(values), len(rows)
    return bag.embedding_bag_backward(values, (rows, xp.arange(n + 1), xp.ones(n, values.dtype), V))


def make_step(comm=None, micro_batch=0):
    """A train_step for this rank of ``comm`` (None: one process), encoding ``micro_batch``
    pairs at a time (0: all of the rank's at once)."""
    R, r = (comm.size, comm.rank) if comm is not None else (1, 0)

    def step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
        xp = xp_of(*params.values())
        ids, offsets = to_numpy(ids), to_numpy(offsets).astype(np.int64)
        B = (len(offsets) - 1) // 2
        share = [(q + 1) * B // R - q * B // R for q in range(R)]   # pairs lo .. lo+n-1 are ours
        lo, n = r * B // R, share[r]
        chunks = [(a, min(a + (micro_batch or n), lo + n))
                  for a in range(lo, lo + n, micro_batch or n)]
        drop = enc_cfg.get("model") == "transformer" and enc_cfg.get("dropout", 0) > 0
        glay = transformer.layout(ids, offsets, enc_cfg["max_len"], enc_cfg.get(
            "buckets", transformer.BUCKETS)) if drop and xp is np else None
        seed = int(rng.integers(2 ** 62)) if drop and xp is not np else 0

        def forward(i):  # chunk i's views: its anchors, then their positives
            a, b = chunks[i]
            v = np.r_[a:b, B + a:B + b]
            lens = offsets[v + 1] - offsets[v]
            sub_ids, sub_off = ids[gather_ranges(offsets[v], lens)], np.r_[0, np.cumsum(lens)]
            g = rng if not drop else _Replay(rng, glay, v, sub_ids, sub_off, enc_cfg) \
                if glay is not None else np.random.default_rng([seed, r, i])  # GPU: its own masks
            return encoder.forward(params, to_device(sub_ids, xp), to_device(sub_off, xp), enc_cfg,
                                   train=True, rng=g)

        out = [forward(i) if not micro_batch else (forward(i)[0], None)  # micro: no caches kept
               for i in range(len(chunks))]
        half = [(e[:b - a], e[b - a:]) for (e, _), (a, b) in zip(out, chunks)]
        local = xp.stack([xp.concatenate([h[0] for h in half]),
                          xp.concatenate([h[1] for h in half])], 1)
        both = comm.allgather(local, share) if comm is not None else local  # (B, 2, D): all pairs
        loss, accuracy, demb = contrastive_loss(xp.concatenate([both[:, 0], both[:, 1]]), cfg.scale,
                                                cfg.symmetric, loss_dims(cfg))  # train_step's loss
        da, dp = demb[:B], demb[B:]                                         # (B, D) each
        grads = None
        for i, (a, b) in enumerate(chunks):
            cache = out[i][1] if out[i][1] is not None else forward(i)[1]   # re-encoded with caches
            out[i] = None
            g = encoder.backward(xp.concatenate([da[a:b], dp[a:b]]), cache)  # our rows of dL/de
            del cache                                        # before the next chunk's forward
            grads = g if grads is None else {k: merge_rows(
                xp.concatenate([grads[k].rows, v.rows]),
                xp.concatenate([grads[k].values, v.values]), params[k].shape[0])
                if isinstance(v, RowGrad) else grads[k] + v for k, v in g.items()}
        return loss, accuracy, grads if comm is None else comm.sum_grads(grads, params)
    return step


class _Replay:
    """Stands in for the step's Generator in the transformer's forward of some of the views (a
    rank's, a chunk's): each draw is what the forward of the whole batch drew for these views.
    That forward draws, per layer: (N_b, H, T_b, T_b) per length bucket (attention), then
    (M, D) twice (the residual branches; rows in packed order)."""

    def __init__(self, rng, glay, views, sub_ids, sub_off, enc_cfg):
        c = enc_cfg
        self.state, self.bg = rng.bit_generator.state, np.random.PCG64()
        self.gen, H, D = np.random.Generator(self.bg), c["heads"], c["dim"]
        lay = transformer.layout(sub_ids, sub_off, c["max_len"],
                                 c.get("buckets", transformer.BUCKETS))
        gN = np.array([km.shape[0] for _, km in glay["grids"]])
        gT = np.array([km.shape[1] for _, km in glay["grids"]])
        gpos = np.argsort(glay["order"])[views[lay["order"]]]   # each local view's packed place
        gb = np.searchsorted(np.cumsum(gN), gpos, side="right")  # and bucket in the whole batch
        att = np.r_[0, np.cumsum(gN * H * gT * gT)]
        # (offset, T_b) of its attention draw
        self.att = [(att[b] + (p - np.r_[0, np.cumsum(gN)][b]) * H * gT[b] ** 2, gT[b])
                    for p, b in zip(gpos, gb)]
        self.rows, self.lens = glay["starts"][gpos] * D, np.diff(lay["starts"])  # and its rows'
        self.grids, self.H, self.D, self.MD, self.A = (lay["grids"], H, D, len(glay["ids"]) * D,
                                                       att[-1])
        self.it, self.left = self._draws(c["layers"]), None

    def _at(self, k, n):
        """Uniforms k..k+n-1 of the step's float32 stream: float32 draw i is a 32-bit half of
        PCG64's 64-bit output, low half first (a buffered half, has_uint32, comes first)."""
        if k == 0:
            self.bg.state, skip = self.state, 0
        else:
            (q, skip), self.bg.state = (divmod(k - self.state["has_uint32"], 2),
                                        dict(self.state, has_uint32=0))
            self.bg.advance(int(q))
        return self.gen.random(n + skip, dtype=np.float32)[skip:]

    def _draws(self, layers):
        H, D, L = self.H, self.D, self.lens
        for layer in range(layers):
            base, j = layer * (self.A + 2 * self.MD), 0
            for _, km in self.grids:
                # padding: unused
                u = np.ones((km.shape[0], H, km.shape[1], km.shape[1]), np.float32)
                for i in range(km.shape[0]):
                    (o, T), n = self.att[j], L[j]
                    u[i, :, :n, :n] = self._at(base + o, H * T * T).reshape(H, T, T)[:, :n, :n]
                    j += 1
                yield u
            for o in (base + self.A, base + self.A + self.MD):
                yield np.concatenate([self._at(o + s, n * D)
                                      for s, n in zip(self.rows, L)]).reshape(-1, D)

    def random(self, shape, dtype=None):
        """The next draw; a draw may be asked for in leading slices (attention, a view at a
        time on a CPU), which is the same stream."""
        if self.left is None or not len(self.left):
            self.left = next(self.it)
        u, self.left = self.left[:shape[0]], self.left[shape[0]:]
        assert u.shape == tuple(shape), (u.shape, shape)
        return u
