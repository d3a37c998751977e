"""Past one process: data-parallel training over MPI (mpi4py; on GPUs NCCL through CuPy),
and gradient caching for batches larger than memory. Both are a ``train_step`` replacement
(``make_step``) that ``train.train_loop`` calls with the step's whole batch and Generator.

R ranks, global batch B: every rank samples the whole batch (a function of seed and step),
keeps its pairs lo..hi (B/R), encodes their views and all-gathers the embeddings, so each
anchor is scored against all B positives. Every rank then computes the same loss
L(e_1..e_B) on the gathered rows, and back-propagates dL/de_i for its own rows only.

The gather's backward. Were the loss split by rank, L = sum_q L_q (L_q: the rows of rank
q's anchors), then dL/de_i = sum_q dL_q/de_i: every rank's loss rows touch rank r's
positives (as negatives), so the gradient of rank r's rows is a *sum over ranks* of
slices: a reduce-scatter. Keeping dL_r/de_i alone (the local slice) drops the other
ranks' terms: the classic bug. Computing all of L on every rank (O(B^2 D), small next to
the encoders) gives dL/de_i without that collective. Parameter gradients are sums over
views, so each rank's encoder backward gives its share and an all-reduce adds them up; an
embedding table's RowGrad is gathered (rows, values) and merged, or summed dense: whichever
moves fewer bytes. Every rank then takes the same Adam step.

Gradient caching (``micro_batch`` M): encode the rank's pairs in chunks of M keeping no
backward caches, InfoNCE on all of them, then re-encode each chunk with its caches and
back-propagate its rows of dL/de: the gradient of the whole batch, memory of M pairs.

Dropout: the transformer draws its masks from the step's Generator, in the order the
forward of the *whole* batch meets them. ``_Replay`` gives the forward of some of the
views the very uniforms that forward would have drawn for them, read at their places in
the step's random stream (PCG64 jumps ahead in O(1)), so R ranks and chunks give the masks
of the single-process run. (On GPUs masks come from CuPy's own generator: there the run
depends on R and M, as a GPU run already differs from a CPU one.)
"""
import os
import sys
import time

import numpy as np

from . import bag, transformer
from .backend import to_device, to_numpy, xp_of
from .crops import _gather_ranges
from .errors import MinembedError
from .layers import RowGrad
from .loss import infonce_backward, infonce_forward

WORLD_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # set by mpiexec


def world_size():
    """How many processes an MPI launcher started together (1: none)."""
    return max(int(os.environ.get(v) or 1) for v in WORLD_SIZE_VARS)


def connect(device="cpu"):
    """The MPI world as a Comm (GPU ranks: one GPU each, NCCL for the arrays)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise MinembedError("distributed training needs mpi4py and an MPI: "
                            "pip install -e \".[mpi]\"") from None
    return Comm(MPI.COMM_WORLD, gpu=device == "gpu")


class Comm:
    """The collectives a step needs. ``seconds``: time spent in them so far."""

    def __init__(self, mpi_comm, gpu=False):
        from mpi4py import MPI
        self.mpi, self.MPI, self.nccl, self.seconds = mpi_comm, MPI, None, 0.0
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        if gpu:  # one GPU per rank on each node; NCCL's id travels over MPI
            import cupy
            from cupy.cuda import nccl
            local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
            cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
            uid = mpi_comm.bcast(nccl.get_unique_id() if self.rank == 0 else None)
            self.nccl, self._nc = nccl.NcclCommunicator(self.size, uid, self.rank), nccl

    def _on_gpu(self, x):
        return self.nccl is not None and not isinstance(x, np.ndarray)

    def _nccl_args(self, x):
        import cupy
        t = {"float32": self._nc.NCCL_FLOAT32, "float64": self._nc.NCCL_FLOAT64,
             "int64": self._nc.NCCL_INT64, "int32": self._nc.NCCL_INT32}[x.dtype.name]
        return t, cupy.cuda.get_current_stream().ptr

    def allreduce(self, x):
        """x summed over ranks, in place."""
        t0 = time.perf_counter()
        if self._on_gpu(x):
            dtype, stream = self._nccl_args(x)
            self.nccl.allReduce(x.data.ptr, x.data.ptr, x.size, dtype, self._nc.NCCL_SUM, stream)
        else:
            self.mpi.Allreduce(self.MPI.IN_PLACE, x)
        self.seconds += time.perf_counter() - t0
        return x

    def allgather(self, x, counts):
        """The rows of x (counts[q] on rank q) of every rank, in rank order."""
        t0 = time.perf_counter()
        xp, x = xp_of(x), xp_of(x).ascontiguousarray(x)
        row = int(np.prod(x.shape[1:]))
        if self._on_gpu(x):  # NCCL has no Allgatherv: pad every rank's rows to the longest
            top = max(counts)
            buf = xp.zeros((top,) + x.shape[1:], x.dtype)
            buf[:len(x)] = x
            got = xp.empty((self.size,) + buf.shape, x.dtype)
            dtype, stream = self._nccl_args(x)
            self.nccl.allGather(buf.data.ptr, got.data.ptr, buf.size, dtype, stream)
            out = xp.concatenate([got[q, :c] for q, c in enumerate(counts)])
        else:
            out = np.empty((sum(counts),) + x.shape[1:], x.dtype)
            self.mpi.Allgatherv(x, [out, np.asarray(counts) * row])
        self.seconds += time.perf_counter() - t0
        return out

    def counts(self, n):
        return self.mpi.allgather(int(n))

    def any(self, flag):
        return bool(self.mpi.allreduce(bool(flag), op=self.MPI.LOR))

    def lead_first(self, fn):
        """fn(None) on rank 0 -> (result, shared); then fn(shared) on the others (so rank 0
        fills the caches they read). An error on any rank is raised on all, as MinembedError:
        every rank fails together (rank 0 prints it, see ``guard``)."""
        res, err = _attempt(fn, None) if self.rank == 0 else (None, None)
        ok, shared = self.mpi.bcast((err is None, res and res[1]))
        if self.rank != 0 and ok:
            res, err = _attempt(fn, shared)
        errs = self.mpi.allgather(None if err is None else str(err) or type(err).__name__)
        if any(errs):
            raise err if isinstance(err, MinembedError) else MinembedError(next(e for e in errs if e))
        return res[0]

    def guard(self, fn):
        """fn() on this rank. A MinembedError or a Ctrl-C stop (raised on every rank together)
        is marked quiet on all but rank 0 (the CLI prints rank 0's); anything else ends every
        rank (MPI_Abort), so that none waits for ever in a collective."""
        try:
            return fn()
        except (MinembedError, KeyboardInterrupt) as e:
            if type(e) is KeyboardInterrupt and self.size > 1:  # a second Ctrl-C: abort
                self.mpi.Abort(130)
            e.quiet = self.rank != 0
            raise
        except BaseException as e:
            if self.size == 1:
                raise
            print(f"Error: process {self.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self.mpi.Abort(1)

    def sum_grads(self, grads, params):
        """Every gradient summed over ranks (dense ones in one all-reduce); a RowGrad stays
        one, over the union of the ranks' rows."""
        dense = [k for k, g in grads.items() if not isinstance(g, RowGrad)]
        if dense:
            flat = self.allreduce(xp_of(grads[dense[0]]).concatenate([grads[k].ravel() for k in dense]))
            at = np.cumsum([0] + [grads[k].size for k in dense])
            grads.update({k: flat[a:b].reshape(grads[k].shape) for k, a, b in zip(dense, at, at[1:])})
        for k, g in grads.items():
            if isinstance(g, RowGrad):
                grads[k] = self._sum_rows(g, *params[k].shape)
        return grads

    def _sum_rows(self, g, V, D):
        xp, counts = xp_of(g.values), self.counts(len(g.rows))
        # bytes a rank receives: gathered rows (ids + values) vs a ring all-reduce of (V, D+1)
        if sum(counts) * (D * 4 + 8) <= SPARSE_FACTOR * 2 * V * (D + 1) * 4 * (self.size - 1) / self.size:
            rows = g.rows.astype(np.int64).view(g.values.dtype).reshape(len(g.rows), -1)  # the bits
            got = self.allgather(xp.concatenate([g.values, rows], axis=1), counts)  # one message
            return merge_rows(xp.ascontiguousarray(got[:, D:]).view(np.int64).ravel(), got[:, :D], V)
        t = xp.zeros((V, D + 1), g.values.dtype)  # the last column counts the ranks using a row
        t[g.rows, :D], t[g.rows, D] = g.values, 1
        rows = xp.flatnonzero(self.allreduce(t)[:, D])
        return RowGrad(rows, t[rows, :D])


SPARSE_FACTOR = 1.0  # gather rows while they move no more bytes than a dense all-reduce (measured)


def _attempt(fn, arg):
    try:
        return fn(arg), None
    except Exception as e:  # noqa: BLE001 - reported to every rank
        return None, e


def merge_rows(rows, values, V):
    """Rows with repeats -> RowGrad over the distinct rows, repeats summed: the bag layer's
    scatter with one-row "views" of weight 1 (d table[u] = sum of the values of row u)."""
    xp, n = xp_of(values), len(rows)
    return bag.embedding_bag_backward(values, (rows, xp.arange(n + 1), xp.ones(n, values.dtype), V))


def _add(a, b, params):
    for k, g in b.items():
        a[k] = merge_rows(xp_of(g.values).concatenate([a[k].rows, g.rows]), xp_of(g.values).concatenate(
            [a[k].values, g.values]), params[k].shape[0]) if isinstance(g, RowGrad) else a[k] + g
    return a


def make_step(comm=None, micro_batch=0):
    """A train_step for this rank of ``comm`` (None: one process) encoding ``micro_batch``
    pairs at a time (0: all at once)."""
    R, r = (comm.size, comm.rank) if comm is not None else (1, 0)

    def step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
        xp = xp_of(*params.values())
        ids, offsets = to_numpy(ids), to_numpy(offsets).astype(np.int64)
        B = (len(offsets) - 1) // 2
        share = [(q + 1) * B // R - q * B // R for q in range(R)]           # pairs of each rank
        lo, n = r * B // R, share[r]
        m = micro_batch or n
        chunks = [(a, min(a + m, lo + n)) for a in range(lo, lo + n, m)]    # pair ranges
        drop = enc_cfg.get("model") == "transformer" and enc_cfg.get("dropout", 0) > 0
        glay = transformer.layout(ids, offsets, enc_cfg["max_len"], enc_cfg.get(
            "buckets", transformer.BUCKETS)) if drop and xp is np else None
        seed = int(rng.integers(2 ** 62)) if drop and xp is not np else 0

        def forward(i):  # chunk i's views: its anchors, then their positives
            a, b = chunks[i]
            v = np.r_[a:b, B + a:B + b]
            lens = offsets[v + 1] - offsets[v]
            sub_ids, sub_off = ids[_gather_ranges(offsets[v], lens)], np.r_[0, np.cumsum(lens)]
            g = rng if not drop else _Replay(rng, glay, v, sub_ids, sub_off, enc_cfg) \
                if glay is not None else np.random.default_rng([seed, r, i])
            return encoder.forward(params, to_device(sub_ids, xp), to_device(sub_off, xp), enc_cfg,
                                   train=True, rng=g)

        out = [forward(i) if not micro_batch else (forward(i)[0], None)  # micro: no caches kept
               for i in range(len(chunks))]
        k = [b - a for a, b in chunks]
        local = xp.stack([xp.concatenate([e[:c] for (e, _), c in zip(out, k)]),
                          xp.concatenate([e[c:] for (e, _), c in zip(out, k)])], axis=1)  # (n, 2, D)
        both = comm.allgather(local, share) if comm is not None else local  # (B, 2, D)
        loss, lcache = infonce_forward(both[:, 0], both[:, 1], scale=cfg.scale, symmetric=cfg.symmetric)
        da, dp = infonce_backward(1.0, lcache)                              # (B, D) each
        grads = None
        for i, ((a, b), (_, cache)) in enumerate(zip(chunks, out)):
            cache = forward(i)[1] if cache is None else cache               # re-encode with caches
            out[i] = None
            g = encoder.backward(xp.concatenate([da[a:b], dp[a:b]]), cache)
            grads = g if grads is None else _add(grads, g, params)
        if comm is not None:
            grads = comm.sum_grads(grads, params)
        return loss, lcache["accuracy"], grads
    return step


class _Replay:
    """Stands in for the step's Generator in the transformer's forward of some views (a
    rank's, a chunk's): each draw is the uniforms the forward of the whole batch drew for
    these views. That forward draws, per layer: per length bucket (N_b, H, T_b, T_b)
    (attention), then (M, D) twice (residual branches, rows in packed order)."""

    def __init__(self, rng, glay, views, sub_ids, sub_off, enc_cfg):
        c = dict(transformer.DEFAULTS, **enc_cfg)
        self.state, self.bg = rng.bit_generator.state, np.random.PCG64()
        self.gen = np.random.Generator(self.bg)
        H, D, M = c["heads"], c["dim"], len(glay["ids"])
        lay = transformer.layout(sub_ids, sub_off, c["max_len"], c.get("buckets", transformer.BUCKETS))
        gN = [km.shape[0] for _, km in glay["grids"]]
        gT = np.array([km.shape[1] for _, km in glay["grids"]])
        gpos = np.argsort(glay["order"])[views[lay["order"]]]  # packed place of each local view
        gb = np.searchsorted(np.cumsum(gN), gpos, side="right")  # its bucket there
        att, first = np.r_[0, np.cumsum(np.array(gN) * H * gT * gT)], np.r_[0, np.cumsum(gN)]
        self.att = [(att[b] + (p - first[b]) * H * gT[b] ** 2, gT[b])  # (offset, T_b) of each
                    for p, b in zip(gpos, gb)]                         # local packed view's draw
        self.rows = glay["starts"][gpos] * D                    # its residual rows' offset
        self.lens, self.grids, self.H, self.D, self.MD = np.diff(lay["starts"]), lay["grids"], H, D, M * D
        self.att_total, self.it = att[-1], self._draws(c["layers"])

    def _at(self, k, n):
        """Uniforms k..k+n-1 of the step's float32 stream: float32 draw i is a 32-bit half of
        PCG64's 64-bit output, low half first (a buffered half, has_uint32, comes first)."""
        h = self.state["has_uint32"]
        if k == 0:
            self.bg.state, skip = self.state, 0
        else:
            (q, skip), self.bg.state = divmod(k - h, 2), dict(self.state, has_uint32=0)
            self.bg.advance(int(q))
        return self.gen.random(n + skip, dtype=np.float32)[skip:]

    def _draws(self, layers):
        H, D, L = self.H, self.D, self.lens
        for layer in range(layers):
            base, j = layer * (self.att_total + 2 * self.MD), 0
            for _, km in self.grids:
                N, T = km.shape
                u = np.ones((N, H, T, T), np.float32)  # padding cells: never used
                for i in range(N):
                    o, Tg = self.att[j + i]
                    u[i, :, :L[j + i], :L[j + i]] = self._at(base + o, H * Tg * Tg).reshape(
                        H, Tg, Tg)[:, :L[j + i], :L[j + i]]
                j += N
                yield u
            for o in (base + self.att_total, base + self.att_total + self.MD):
                yield np.concatenate([self._at(o + s, l * D) for s, l in zip(self.rows, L)]
                                     ).reshape(-1, D)

    def random(self, shape, dtype=None):
        u = next(self.it)
        assert u.shape == tuple(shape), (u.shape, shape)
        return u
