"""Past one process: the MPI world (mpi4py; NCCL through CuPy for GPU arrays) and the
collectives a data-parallel step needs (minembed/product/gradcache.py takes the step).

Parameter gradients are sums over ranks (``sum_grads``): the dense ones in one all-reduce; an
embedding table's RowGrad as its gathered rows, merged, or a dense all-reduce, whichever moves
fewer bytes. Errors: an error every rank raises together is reported once; any other ends all
ranks (``guard``), so that none waits for ever in a collective.
"""
import os
import sys
import time

import numpy as np

from ..core.backend import xp_of
from ..core.layers import RowGrad
from ..errors import MinembedError
from .gradcache import merge_rows

WORLD_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # set by mpiexec
SPARSE_FACTOR = 1.0  # gather a table's rows while they move no more bytes than a dense all-reduce


def connect(device="cpu", force=False):
    """The MPI world as a Comm when an MPI launcher started several processes (or ``force``),
    else None. GPU ranks: one GPU each, NCCL for the arrays."""
    if not force and max(int(os.environ.get(v) or 1) for v in WORLD_SIZE_VARS) < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise MinembedError('distributed training needs mpi4py and an MPI: pip install -e '
                            '".[mpi]"') from None
    return Comm(MPI.COMM_WORLD, gpu=device == "gpu")


def collective(e):
    """Mark an error as raised by every rank together (see Comm.guard)."""
    e.collective = True
    return e


class Comm:
    """The collectives a step needs."""

    def __init__(self, mpi_comm, gpu=False):
        from mpi4py import MPI
        self.mpi, self.MPI, self.nccl = mpi_comm, MPI, None
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        if gpu:  # one GPU per rank on each node; NCCL's id travels over MPI
            import cupy
            from cupy.cuda import nccl
            local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
            cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
            uid = mpi_comm.bcast(nccl.get_unique_id() if self.rank == 0 else None)
            self.nccl, self._nc = nccl.NcclCommunicator(self.size, uid, self.rank), nccl

    def _nccl(self, x):
        """(NCCL dtype, stream) for a CuPy array if NCCL is on; None: MPI moves x."""
        if self.nccl is None or isinstance(x, np.ndarray):
            return None
        import cupy
        return getattr(self._nc, "NCCL_" + x.dtype.name.upper()), cupy.cuda.get_current_stream().ptr

    def allreduce(self, x):
        """x summed over ranks, in place."""
        nc = self._nccl(x)
        if nc:
            self.nccl.allReduce(x.data.ptr, x.data.ptr, x.size, nc[0], self._nc.NCCL_SUM, nc[1])
        else:
            self.mpi.Allreduce(self.MPI.IN_PLACE, x)
        return x

    def allgather(self, x, counts):
        """The rows of x (counts[q] of them on rank q) of every rank, in rank order."""
        xp, nc = xp_of(x), self._nccl(x)
        x = xp.ascontiguousarray(x)
        if nc:  # NCCL has no Allgatherv: pad every rank's rows to the most
            buf = xp.zeros((self.size, max(counts)) + x.shape[1:], x.dtype)
            buf[self.rank, :len(x)] = x
            self.nccl.allGather(buf[self.rank].data.ptr, buf.data.ptr, buf[0].size, nc[0], nc[1])
            out = xp.concatenate([buf[q, :c] for q, c in enumerate(counts)])
        else:
            out = np.empty((sum(counts),) + x.shape[1:], x.dtype)
            self.mpi.Allgatherv(x, [out, np.asarray(counts) * int(np.prod(x.shape[1:]))])
        return out

    def any(self, flag):
        return bool(self.mpi.allreduce(bool(flag), op=self.MPI.LOR))

    def lead_first(self, fn):
        """fn(None) -> (result, shared) on rank 0; then fn(shared) on the others (so that rank
        0 fills the caches they read). An error on any rank is raised on every rank."""
        res, err = _attempt(fn, None) if self.rank == 0 else (None, None)
        ok, shared = self.mpi.bcast((err is None, res and res[1]))
        if self.rank != 0 and ok:
            res, err = _attempt(fn, shared)
        errs = self.mpi.allgather(None if err is None else str(err) or type(err).__name__)
        if any(errs):
            raise collective(err if isinstance(err, MinembedError)
                             else MinembedError(next(filter(None, errs))))
        return res[0]

    def guard(self, fn):
        """fn() on this rank. An error all ranks raise together (``collective``) is quiet but on
        rank 0; any other ends every rank (MPI_Abort): none waits for ever in a collective."""
        try:
            return fn()
        except BaseException as e:
            if self.size == 1 or getattr(e, "collective", False):
                e.quiet = self.rank != 0
                raise
            print(f"Error: process {self.rank}: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
            # for mpiexec to pass the line on: the abort ends its I/O forwarding too
            time.sleep(0.2)
            self.mpi.Abort(130 if isinstance(e, KeyboardInterrupt) else 1)

    def sum_grads(self, grads, params):
        """Every gradient summed over ranks (the dense ones in one all-reduce); a RowGrad
        stays one, over the union of the ranks' rows."""
        dense = [k for k, g in grads.items() if not isinstance(g, RowGrad)]
        if dense:
            flat = self.allreduce(xp_of(grads[dense[0]]).concatenate([grads[k].ravel()
                                                                      for k in dense]))
            at = np.cumsum([0] + [grads[k].size for k in dense])
            grads.update({k: flat[a:b].reshape(grads[k].shape)
                          for k, a, b in zip(dense, at, at[1:])})
        for k, g in grads.items():
            if isinstance(g, RowGrad):
                grads[k] = self._sum_rows(g, *params[k].shape)
        return grads

    def _sum_rows(self, g, V, D):
        xp, counts = xp_of(g.values), self.mpi.allgather(len(g.rows))
        # bytes a rank receives: the gathered rows (ids and values) vs a ring all-reduce of (V, D+1)
        if (sum(counts) * (D * 4 + 8)
                <= SPARSE_FACTOR * 2 * V * (D + 1) * 4 * (self.size - 1) / self.size):
            # their bits
            ids = g.rows.astype(np.int64).view(g.values.dtype).reshape(len(g.rows), -1)
            got = self.allgather(xp.concatenate([g.values, ids], axis=1), counts)    # one message
            return merge_rows(xp.ascontiguousarray(got[:, D:]).view(np.int64).ravel(),
                              got[:, :D], V)
        t = xp.zeros((V, D + 1), g.values.dtype)  # the last column: how many ranks used the row
        t[g.rows, :D], t[g.rows, D] = g.values, 1
        rows = xp.flatnonzero(self.allreduce(t)[:, D])
        return RowGrad(rows, t[rows, :D])


def _attempt(fn, arg):
    try:
        return fn(arg), None
    except Exception as e:  # noqa: BLE001 - every rank hears of it
        return None, e


