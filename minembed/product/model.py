"""A model directory, and the Python API to use one.

    config.json        the encoder's hyper-parameters (+ how it was trained)
    tokenizer.json     the tokenizer (Hugging Face `tokenizers` format)
    model.safetensors  the weights, one tensor per parameter name (safetensors: no pickle)
    log.jsonl          the training log, one JSON object per step
    manifest.json      size and SHA-256 of each of the files above, written last

Directories written before safetensors hold ``model.npz`` instead (read with
``allow_pickle=False``); they still load. Every file is written atomically (a
temporary file, fsync, os.replace) with the permissions the umask gives, so a
crash never leaves a half-written file under a real name; ``load`` checks the
manifest and names the file that is missing or damaged.
"""
import contextlib
import hashlib
import json
import numbers
import os
import tempfile
import warnings

import numpy as np

from ..core.backend import get_xp, to_device, to_numpy, xp_of
from ..errors import MinembedError
from .runtime import tuned
from .tokenize import encode_texts, tokenizer_from_str

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_FILES = ("config.json", "tokenizer.json", WEIGHTS)
TOKENIZE_CHUNK = 8192  # texts per call of the tokenizer in encode()


def encoder_module(name):
    """The module implementing an encoder (the interface in docs/DESIGN.md)."""
    if name == "bag":
        from ..core import bag
        return bag
    if name == "transformer":
        from ..core import transformer
        return transformer
    raise MinembedError(f"unknown model type {name!r} (expected bag or transformer)")


# ---------------------------------------------------------------------------
# files

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
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
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


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(model_dir, files=MODEL_FILES):
    entries = {}
    for name in files:
        p = os.path.join(model_dir, name)
        entries[name] = {"size": os.path.getsize(p), "sha256": _sha256(p)}
    atomic_write_json(os.path.join(model_dir, "manifest.json"), {"files": entries})


def _weights_file(model_dir):
    legacy = os.path.join(model_dir, "model.npz")
    return "model.npz" if not os.path.isfile(os.path.join(model_dir, WEIGHTS)) and \
        os.path.isfile(legacy) else WEIGHTS


def verify_manifest(model_dir):
    """Raise MinembedError naming the first file that is missing or does not match."""
    mpath = os.path.join(model_dir, "manifest.json")
    try:
        with open(mpath, "rb") as f:
            entries = json.loads(f.read().decode("utf-8"))["files"]
        entries = {name: (int(want["size"]), str(want["sha256"])) for name, want in entries.items()}
    except FileNotFoundError:
        raise MinembedError(f"{model_dir}: manifest.json is missing (not a complete minembed model)") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MinembedError(f"{model_dir}: manifest.json is damaged") from None
    for name in MODEL_FILES[:2] + (_weights_file(model_dir),):
        if name not in entries:
            raise MinembedError(f"{model_dir}: manifest.json does not list {name} (damaged)")
    for name, (size, sha) in entries.items():
        p = os.path.join(model_dir, name)
        if not os.path.isfile(p):
            raise MinembedError(f"{model_dir}: {name} is missing")
        if os.path.getsize(p) != size:
            raise MinembedError(f"{model_dir}: {name} has {os.path.getsize(p)} bytes, "
                                f"the manifest says {size} (truncated or replaced)")
        if _sha256(p) != sha:
            raise MinembedError(f"{model_dir}: {name} does not match its checksum (corrupted)")


def save_model(model_dir, config, params, tokenizer, extra=None):
    """Write a complete model directory (each file atomically, the manifest last).
    ``extra``: {file name: bytes} written too and listed in the manifest."""
    os.makedirs(model_dir, exist_ok=True)
    atomic_write_json(os.path.join(model_dir, "config.json"), config)
    atomic_write_bytes(os.path.join(model_dir, "tokenizer.json"), tokenizer.to_str().encode("utf-8"))
    atomic_write_bytes(os.path.join(model_dir, WEIGHTS), weights_bytes(params))
    for name, data in (extra or {}).items():
        atomic_write_bytes(os.path.join(model_dir, name), data)
    for stale in ("model.npz", "int8_scales.json"):  # a model written before safetensors, or
        if os.path.exists(os.path.join(model_dir, stale)):  # scales of the old weights (--force)
            os.unlink(os.path.join(model_dir, stale))
    write_manifest(model_dir, MODEL_FILES + tuple(extra or {}))


def add_file(model_dir, name, data):
    """Write (or replace) one more file in a model directory and list it in the manifest."""
    atomic_write_bytes(os.path.join(model_dir, name), data)
    with open(os.path.join(model_dir, "manifest.json"), encoding="utf-8") as f:
        names = list(json.load(f)["files"])
    write_manifest(model_dir, names + [name] * (name not in names))


def read_log(model_dir):
    """The records of a model directory's log.jsonl (or of that file itself)."""
    path = os.path.join(model_dir, "log.jsonl") if os.path.isdir(model_dir) else model_dir
    if not os.path.isfile(path):
        raise MinembedError(f"no training log at {path}")
    recs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    raise MinembedError(f"{path}: line {n} is not valid JSON") from None
    if not recs:
        raise MinembedError(f"{path} is empty: the training recorded no step")
    return recs


def holds_model(path):
    return any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", WEIGHTS, "model.npz"))


# ---------------------------------------------------------------------------
# the model object

class Model:
    """A trained (or freshly initialised) encoder with its tokenizer.

    ``encode(texts)`` gives one float32 vector per text; that is the whole API.
    """

    def __init__(self, config, params, tokenizer, path=None):
        self.config, self.params, self.tokenizer, self.path = config, params, tokenizer, path
        self.encoder = encoder_module(config["model"])

    @property
    def dim(self):
        return int(self.config["dim"])

    def check_dim(self, dim):
        """``dim`` (None: the model's) as an int, or a MinembedError; a warning when the
        model was not trained for vectors cut to that many dimensions (--matryoshka)."""
        if dim is None:
            return self.dim
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or not 0 < dim <= self.dim:
            raise MinembedError(f"dim must be an integer from 1 to {self.dim} (the model's dimension), "
                                f"got {dim!r}")
        trained = self.config.get("matryoshka", [self.dim])
        if dim not in trained:
            warnings.warn(f"this model was trained at dimension{'s' * (len(trained) > 1)} "
                          f"{', '.join(map(str, trained))}, not {dim} (train with --matryoshka "
                          f"{dim}); its vectors cut to {dim} dimensions may be much worse", stacklevel=3)
        return int(dim)

    def encode(self, texts, batch_size=256, normalize=None, progress=None, dim=None, threads=None):
        """Embed texts: float32 array (N, dim); a single string gives one vector (dim,).
        Texts are processed in batches of similar length (sorted by length, then
        restored to the input order). An empty text gives a zero vector.

        ``normalize`` scales rows to unit length. The default (None) follows the
        model's config, which is True for trained models: training compares
        vectors by cosine similarity only, so their direction is what was learned
        and their length is noise (for the bag model, kNN with Euclidean distance
        on raw means is 6-12 points worse than on unit vectors).
        ``dim=k`` keeps the first k dimensions (then normalises): a model trained
        with ``--matryoshka`` has those prefixes trained as embeddings on their own.
        ``progress(n)`` is called with the number of texts of each batch done.
        ``threads``: BLAS threads (None: MINEMBED_THREADS, else chosen: minembed/runtime.py)."""
        if isinstance(texts, str):
            return self.encode([texts], batch_size, normalize, dim=dim, threads=threads)[0]
        if texts is None or not hasattr(texts, "__iter__"):
            raise MinembedError(f"encode() takes a string or a list of strings, got "
                                f"{type(texts).__name__}")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise MinembedError(f"encode(): text {bad} is a {type(texts[bad]).__name__}, not a string")
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise MinembedError(f"batch_size must be a positive integer, got {batch_size!r}")
        if normalize is None:
            normalize = bool(self.config.get("normalize", True))
        k = self.check_dim(dim)
        out = np.zeros((len(texts), k), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        xp = xp_of(*self.params.values())
        # the tokenizer's threads want big batches (256 texts: 0.75x the speed of 8,192)
        chunk = max(batch_size, TOKENIZE_CHUNK)
        with tuned(self.config["model"], threads):
            for c in range(0, len(texts), chunk):
                ids, offsets = encode_texts(self.tokenizer, [texts[i] for i in order[c:c + chunk]])
                for b in range(0, len(offsets) - 1, batch_size):
                    o = offsets[b:b + batch_size + 1]
                    emb = to_numpy(self.encoder.encode(self.params, to_device(ids[o[0]:o[-1]], xp),
                                                       to_device(o - o[0], xp), self.config))[:, :k]
                    if normalize:  # while the batch is in cache
                        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                    out[order[c + b:c + b + len(o) - 1]] = emb
                    if progress is not None:
                        progress(len(o) - 1)
        return out


def _check_config(path, config):
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise MinembedError(f"{path}: config.json is unreadable or damaged")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise MinembedError(f"{path} was written by a newer minembed (format version "
                            f"{config['format_version']}, this one reads {FORMAT_VERSION}); upgrade "
                            f"minembed")
    encoder_module(config["model"])
    keys = ("vocab_size", "dim") + (("layers", "heads", "ffn", "max_len")
                                    if config["model"] == "transformer" else ())
    for k in keys:
        v = config.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2 ** 31:
            raise MinembedError(f"{path}: config.json has {k} = {v!r}, not a positive integer (damaged)")
    dims = config.get("matryoshka", [config["dim"]])
    if not isinstance(dims, list) or not all(type(k) is int and 0 < k <= config["dim"] for k in dims):
        raise MinembedError(f"{path}: config.json has matryoshka = {dims!r}, not a list of dimensions")


def load(path, device="cpu", verify=True):
    """Load a model directory written by ``minembed train``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MinembedError(f"model directory not found: {path}")
    if not holds_model(path):
        raise MinembedError(f"{path} does not hold a minembed model (no config.json)")
    if verify:
        verify_manifest(path)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        raise MinembedError(f"{path}: config.json is unreadable or damaged") from None
    _check_config(path, config)
    try:
        with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
            tok = tokenizer_from_str(f.read(), where=os.path.join(path, "tokenizer.json"))
    except OSError:
        raise MinembedError(f"{path}: tokenizer.json is missing or unreadable") from None
    name = _weights_file(path)
    try:
        params = load_weights(os.path.join(path, name))
    except Exception as e:  # zip, safetensors and OS errors alike: the file is bad
        raise MinembedError(f"{path}: {name} is unreadable ({type(e).__name__})") from None
    expected = {k: v.shape for k, v in
                encoder_module(config["model"]).init_params(config, np.random.default_rng(0)).items()}
    for k, shape in expected.items():
        if k not in params:
            raise MinembedError(f"{path}: {name} has no parameter {k!r}")
        if params[k].shape != shape:
            raise MinembedError(f"{path}: parameter {k!r} has shape {params[k].shape}, "
                                f"config.json implies {shape}")
    xp = get_xp(device)
    return Model(config, {k: to_device(params[k], xp) for k in expected}, tok, path=path)
