"""A model directory, and the Python API to use one.

    config.json      the encoder's hyper-parameters (+ how it was trained)
    tokenizer.json   the tokenizer (Hugging Face `tokenizers` format)
    model.npz        the weights, one array per parameter name (no pickle)
    log.jsonl        the training log, one JSON object per step
    manifest.json    size and SHA-256 of each of the files above, written last

Every file is written atomically (a temporary file, fsync, os.replace), so a
crash never leaves a half-written file under a real name; ``load`` checks the
manifest and names the file that is missing or damaged.
"""
import hashlib
import io
import json
import os
import tempfile

import numpy as np

from .backend import get_xp, to_device, to_numpy, xp_of
from .errors import MinembedError
from .tokenize import encode_texts, tokenizer_from_str

FORMAT_VERSION = 1
MODEL_FILES = ("config.json", "tokenizer.json", "model.npz")


def encoder_module(name):
    """The module implementing an encoder (the interface in docs/DESIGN.md)."""
    if name == "bag":
        from . import bag
        return bag
    if name == "transformer":
        from . import transformer
        return transformer
    raise MinembedError(f"unknown model type {name!r} (expected bag or transformer)")


# ---------------------------------------------------------------------------
# atomic files

def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that readers see the old file or the new
    one, never a part: write a temporary file beside it, fsync, rename over."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez(buf, **{k: to_numpy(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(path):
    """Arrays from an .npz file, never unpickling."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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
    for name in MODEL_FILES:
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


def save_model(model_dir, config, params, tokenizer):
    """Write a complete model directory (each file atomically, the manifest last)."""
    os.makedirs(model_dir, exist_ok=True)
    atomic_write_json(os.path.join(model_dir, "config.json"), config)
    atomic_write_bytes(os.path.join(model_dir, "tokenizer.json"), tokenizer.to_str().encode("utf-8"))
    atomic_write_bytes(os.path.join(model_dir, "model.npz"), npz_bytes(params))
    write_manifest(model_dir)


def holds_model(path):
    return os.path.isfile(os.path.join(path, "config.json")) or \
        os.path.isfile(os.path.join(path, "model.npz"))


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

    def encode(self, texts, batch_size=256, normalize=None, progress=None):
        """Embed texts: float32 array (N, dim). Texts are processed in batches of
        similar length (sorted by length, then restored to the input order).
        An empty text gives a zero vector.

        ``normalize`` scales rows to unit length. The default (None) follows the
        model's config, which is True for trained models: training compares
        vectors by cosine similarity only, so their direction is what was learned
        and their length is noise (for the bag model, kNN with Euclidean distance
        on raw means is 6-12 points worse than on unit vectors)."""
        if normalize is None:
            normalize = bool(self.config.get("normalize", True))
        if isinstance(texts, str):
            raise MinembedError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        if batch_size < 1:
            raise MinembedError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        xp = xp_of(*self.params.values())
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            ids, offsets = encode_texts(self.tokenizer, [texts[i] for i in idx])
            emb = self.encoder.encode(self.params, to_device(ids, xp), to_device(offsets, xp),
                                      self.config)
            out[idx] = to_numpy(emb)
            if progress is not None:
                progress(len(idx))
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out


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
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        model_type = config["model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MinembedError(f"{path}: config.json is unreadable or damaged") from None
    try:
        with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
            tok = tokenizer_from_str(f.read(), where=os.path.join(path, "tokenizer.json"))
    except OSError:
        raise MinembedError(f"{path}: tokenizer.json is missing or unreadable") from None
    try:
        params = load_npz(os.path.join(path, "model.npz"))
    except (OSError, ValueError) as e:
        raise MinembedError(f"{path}: model.npz is unreadable ({e})") from None
    expected = encoder_module(model_type).init_params(config, np.random.default_rng(0))
    for name, arr in expected.items():
        if name not in params:
            raise MinembedError(f"{path}: model.npz has no parameter {name!r}")
        if params[name].shape != arr.shape:
            raise MinembedError(f"{path}: parameter {name!r} has shape {params[name].shape}, "
                                f"config.json implies {arr.shape}")
    xp = get_xp(device)
    params = {k: to_device(params[k], xp) for k in expected}
    return Model(config, params, tok, path=path)
