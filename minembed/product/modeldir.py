"""A model directory: written whole or not at all, and loaded with every file checked.

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
import json
import os

import numpy as np

from ..errors import MinembedError
from .files import atomic_write_bytes, atomic_write_json, load_weights, sha256_file, weights_bytes
from .model import Model, encoder_module
from ..core.backend import to_device
from .runtime import get_xp
from .tokenize import tokenizer_from_str

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_FILES = ("config.json", "tokenizer.json", WEIGHTS)


def write_manifest(model_dir, files=MODEL_FILES):
    entries = {}
    for name in files:
        p = os.path.join(model_dir, name)
        entries[name] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
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
        raise MinembedError(f"{model_dir}: manifest.json is missing (not a complete minembed "
                            "model)") from None
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
        if sha256_file(p) != sha:
            raise MinembedError(f"{model_dir}: {name} does not match its checksum (corrupted)")


def save_model(model_dir, config, params, tokenizer, extra=None):
    """Write a complete model directory (each file atomically, the manifest last).
    ``extra``: {file name: bytes} written too and listed in the manifest."""
    os.makedirs(model_dir, exist_ok=True)
    atomic_write_json(os.path.join(model_dir, "config.json"), config)
    atomic_write_bytes(os.path.join(model_dir, "tokenizer.json"),
                       tokenizer.to_str().encode("utf-8"))
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


def _check_config(path, config):
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise MinembedError(f"{path}: config.json is unreadable or damaged")
    for key, ok, what in CONFIG_VALUES:
        if key in config and not ok(config[key]):
            raise MinembedError(f"{path}: config.json has {key} = {config[key]!r}, not {what} "
                                f"(damaged)")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise MinembedError(f"{path} was written by a newer minembed (format version "
                            f"{config['format_version']}, this one reads {FORMAT_VERSION}); "
                            f"upgrade minembed")
    encoder_module(config["model"])
    keys = ("vocab_size", "dim") + (("layers", "heads", "ffn", "max_len")
                                    if config["model"] == "transformer" else ())
    for k in keys:
        v = config.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2 ** 31:
            raise MinembedError(f"{path}: config.json has {k} = {v!r}, not a positive integer "
                                "(damaged)")
    dims = config.get("matryoshka", [config["dim"]])
    if not isinstance(dims, list) or not all(type(k) is int and 0 < k <= config["dim"]
                                             for k in dims):
        raise MinembedError(f"{path}: config.json has matryoshka = {dims!r}, not a list of "
                            "dimensions")


# the other values encode() reads: (key, its check, what it must be)
CONFIG_VALUES = (("normalize", lambda v: isinstance(v, bool), "true or false"),
                 ("pooling", lambda v: v in ("mean", "sublinear"), '"mean" or "sublinear"'),
                 ("dropout", lambda v: type(v) in (int, float) and 0 <= v < 1,
                  "a number in [0, 1)"),
                 ("format_version", lambda v: type(v) is int, "an integer"),
                 ("training", lambda v: isinstance(v, dict), "an object"))


def load(path, device="cpu", verify=True):
    """Load a model directory written by ``minembed train``."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise MinembedError(f"load() takes the path of a model directory, got "
                            f"{type(path).__name__}")
    path = os.fsdecode(path)
    if os.path.isfile(path):
        raise MinembedError(f"{path} is a file, not a model directory (load takes the directory "
                            f"minembed train wrote)")
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
                encoder_module(config["model"]).init_params(config,
                                                            np.random.default_rng(0)).items()}
    for k, shape in expected.items():
        if k not in params:
            raise MinembedError(f"{path}: {name} has no parameter {k!r}")
        if params[k].shape != shape:
            raise MinembedError(f"{path}: parameter {k!r} has shape {params[k].shape}, "
                                f"config.json implies {shape}")
    xp = get_xp(device)
    return Model(config, {k: to_device(params[k], xp) for k in expected}, tok, path=path)
