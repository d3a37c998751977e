"""Files, written so that a crash never leaves a half-written one under a real name, and read
without unpickling: atomic writes (a temporary file beside the target, fsync, rename),
safetensors weights, and ``.npy`` arrays streamed to disk and memory-mapped back. The corpus
cache, model directories, checkpoints, exports and maps all write through here."""
import contextlib
import hashlib
import json
import mmap
import os
import tempfile

import numpy as np

from ..core.backend import to_numpy
from ..errors import MinembedError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` for the body to write; then the file gets the
    permissions a plain open() would (0666 minus the umask) and is renamed over ``path``, so
    readers see the old file or the new one, never a part. On any error the temporary is
    removed, and an OSError becomes a MinembedError naming ``path``, not the temporary."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        prefix = f".{os.path.basename(path)}.{os.getpid()}."  # the pid: corpus.remove_stale
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=d)
        os.close(fd)
    except OSError as e:
        raise MinembedError(f"cannot write {path}: {e.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise MinembedError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (``atomic_path``), fsynced before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def weights_bytes(arrays):
    """safetensors bytes of {name: array} (on the host, contiguous)."""
    from safetensors.numpy import save
    return save({k: np.ascontiguousarray(to_numpy(v)) for k, v in arrays.items()})


def load_weights(path):
    """{name: array} from a .safetensors file (or a legacy .npz, never unpickled)."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from safetensors.numpy import load
    with open(path, "rb") as f:
        return load(f.read())


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class NpyWriter:
    """Append to a ``.npy`` file of rows (1-D: ``row=()``; 2-D: ``row=(width,)``) whose
    number is known only at the end.

    The .npy v1.0 format is a 128-byte header (magic, version, a Python-literal
    dict with dtype and shape, space padding) followed by the raw data. We
    reserve the header, stream the data, then write the real header in place.
    """
    HEADER = 128

    def __init__(self, path, dtype, row=()):
        self.path, self.dtype, self.row, self.count = path, np.dtype(dtype), tuple(row), 0
        self.f = open(path, "wb")
        self.f.write(b"\0" * self.HEADER)

    def append(self, arr):
        arr = np.ascontiguousarray(arr, dtype=self.dtype).reshape((-1,) + self.row)
        self.f.write(arr.tobytes())
        self.count += arr.shape[0]

    def close(self):
        d = {"descr": self.dtype.str, "fortran_order": False, "shape": (self.count,) + self.row}
        body = repr(d).encode("latin1")
        pad = self.HEADER - 10 - len(body) - 1
        header = (b"\x93NUMPY\x01\x00" + (len(body) + pad + 1).to_bytes(2, "little") + body
                  + b" " * pad + b"\n")
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def map_npy(path):
    """A read-only array over a 1-D ``.npy`` file through an mmap we hold (so that
    its pages can be released), and that mmap. The header is parsed, never
    unpickled (the format is a Python-literal dict, see NpyWriter)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if major == 1
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        if len(shape) != 1 or dtype.hasobject:
            raise ValueError(f"{path}: expected a 1-D numeric array")
        offset = f.tell()
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, dtype=dtype, count=shape[0], offset=offset), mm




def unlink_quietly(path):
    """Remove a file if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def check_output(path, suffixes=None):
    """Refuse, before any work, an output file that cannot be written: its directory missing or
    not writable, a directory in its place, or (``suffixes``) a name that says another format."""
    path = os.fspath(path)
    where = os.path.dirname(os.path.abspath(path))
    if suffixes and not path.lower().endswith(tuple(suffixes)):
        raise MinembedError(f"{path}: the output must end in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        raise MinembedError(f"{path} is a directory, not a file name")
    if not os.path.isdir(where):
        raise MinembedError(f"cannot write {path}: the directory {where} does not exist")
    if not os.access(where, os.W_OK):
        raise MinembedError(f"cannot write {path}: the directory {where} is not writable")


def check_output_dir(path):
    """Create the output directory ``path`` (and its parents) now, before any work, or refuse."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise MinembedError(f"cannot create the directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise MinembedError(f"cannot write into the directory {path}")
