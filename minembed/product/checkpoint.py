"""Checkpoints: what a training run needs to continue exactly where it stopped.

    MODEL_DIR/checkpoint/
        state-<step>.safetensors   weights (param/<name>) and Adam moments (m/<name>, v/<name>)
        tokenizer.json     the run's tokenizer
        state.json         step, Adam's step, the training config, the corpus's identity,
                           the name, size and SHA-256 of the weights file (written last)

There is no RNG state to save: every random draw of a run is a function of
(seed, purpose, epoch or step) (see train.py), so the step number *is* the
RNG state and the position in the data (epoch = step // steps_per_epoch).

Crash safety: each file is written atomically (temporary file, fsync, rename),
the weights under a new name per step, and ``state.json`` is replaced only
after its weights file is complete; the previous one is deleted after that. So a
crash at any moment leaves either the old checkpoint or the new one, whole.
The log (``log.jsonl``) is fsync'ed before each checkpoint, and a resumed run
cuts it back to the checkpoint's step, so the records of the steps that are
done again are not duplicated.
"""
import hashlib
import json
import os

from ..core.backend import to_numpy
from ..errors import MinembedError
from .files import atomic_write_bytes, atomic_write_json, fsync_dir, load_weights, weights_bytes
from .modeldir import WEIGHTS

CHECKPOINT_DIR = "checkpoint"
FORMAT = "minembed-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_SECONDS = 300  # default: a checkpoint every 5 minutes of training


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training: a checkpoint was saved at ``step``."""

    def __init__(self, step, model_dir):
        self.step, self.model_dir = step, model_dir
        super().__init__(f"interrupted at step {step}; resume with: minembed train --resume "
                         f"{model_dir}")

    def __str__(self):
        return self.args[0]


class Checkpoint:
    """A loaded checkpoint: ``info`` (state.json), ``params``, ``m``, ``v`` (NumPy arrays)."""

    def __init__(self, info, params, m, v, tokenizer):
        self.info, self.params, self.m, self.v, self.tokenizer = info, params, m, v, tokenizer

    @property
    def step(self):
        return int(self.info["step"])


def checkpoint_dir(model_dir):
    return os.path.join(os.fspath(model_dir), CHECKPOINT_DIR)


def has_checkpoint(model_dir):
    return os.path.isfile(os.path.join(checkpoint_dir(model_dir), "state.json"))


def save_checkpoint(model_dir, step, params, adam_state, tokenizer, info):
    """Write a checkpoint of the run at ``step`` (see the module docstring).

    ``info`` is a JSON-able dict (config, corpus identity, ...) stored in state.json.
    """
    d = checkpoint_dir(model_dir)
    os.makedirs(d, exist_ok=True)
    tok_path = os.path.join(d, "tokenizer.json")
    tok_bytes = tokenizer.to_str().encode("utf-8")
    tok_sha = hashlib.sha256(tok_bytes).hexdigest()
    if not os.path.isfile(tok_path):
        atomic_write_bytes(tok_path, tok_bytes)
    arrays = {}
    for k, p in params.items():
        arrays["param/" + k] = to_numpy(p)
        arrays["m/" + k] = to_numpy(adam_state["m"][k])
        arrays["v/" + k] = to_numpy(adam_state["v"][k])
    data = weights_bytes(arrays)
    name = "state-%09d.safetensors" % step
    atomic_write_bytes(os.path.join(d, name), data)
    fsync_dir(d)
    state = dict(info, format=FORMAT, format_version=FORMAT_VERSION, step=int(step),
                 adam_step=int(adam_state["step"]), arrays=name, size=len(data),
                 sha256=hashlib.sha256(data).hexdigest(), tokenizer_sha256=tok_sha)
    atomic_write_json(os.path.join(d, "state.json"), state)
    fsync_dir(d)
    for f in os.listdir(d):  # older weights, and temporary files a killed run left behind
        if (f.startswith("state-") and f != name) or f.endswith(".tmp"):
            try:
                os.unlink(os.path.join(d, f))
            except OSError:
                pass


def read_info(model_dir):
    """The checkpoint's state.json (not yet checked against its files)."""
    model_dir = os.fspath(model_dir)
    d = checkpoint_dir(model_dir)
    where = os.path.join(model_dir, CHECKPOINT_DIR)
    if not os.path.isdir(model_dir):
        raise MinembedError(f"cannot resume: {model_dir} does not exist")
    if not has_checkpoint(model_dir):
        if any(os.path.isfile(os.path.join(model_dir, f)) for f in (WEIGHTS, "model.npz")):
            raise MinembedError(f"cannot resume: {model_dir} has no checkpoint (its training "
                                f"finished; the model there is complete)")
        raise MinembedError(f"cannot resume: {model_dir} has no checkpoint ({where}/state.json)")
    try:
        with open(os.path.join(d, "state.json"), encoding="utf-8") as f:
            info = json.load(f)
        if info.get("format") != FORMAT:
            raise ValueError("not a checkpoint")
        int(info["step"]), int(info["size"]), str(info["sha256"])  # present, and numbers
        name = info["arrays"]
        if os.path.basename(name) != name:
            raise ValueError("bad file name")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise MinembedError(f"{where}/state.json is damaged; the checkpoint cannot be "
                            "used") from None
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise MinembedError(f"{where} was written by a newer minembed (format "
                            f"{info['format_version']})")
    return info


def load_checkpoint(model_dir):
    """The checkpoint in ``model_dir``, verified; MinembedError naming what is wrong."""
    from .tokenize import tokenizer_from_str

    info = read_info(model_dir)
    model_dir = os.fspath(model_dir)
    d = checkpoint_dir(model_dir)
    where = os.path.join(model_dir, CHECKPOINT_DIR)
    step, name, size, sha = int(info["step"]), info["arrays"], int(info["size"]), info["sha256"]
    path = os.path.join(d, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise MinembedError(f"{where}/{name} is missing; the checkpoint cannot be used") from None
    if len(data) != size:
        raise MinembedError(f"{where}/{name} has {len(data)} bytes, state.json says {size} "
                            "(truncated)")
    if hashlib.sha256(data).hexdigest() != sha:
        raise MinembedError(f"{where}/{name} does not match its checksum (corrupted)")
    try:
        with open(os.path.join(d, "tokenizer.json"), "rb") as f:
            tok_bytes = f.read()
    except OSError:
        raise MinembedError(f"{where}/tokenizer.json is missing; the checkpoint cannot be "
                            "used") from None
    if hashlib.sha256(tok_bytes).hexdigest() != info.get("tokenizer_sha256"):
        raise MinembedError(f"{where}/tokenizer.json does not match its checksum (corrupted)")
    tok = tokenizer_from_str(tok_bytes.decode("utf-8"), where=f"{where}/tokenizer.json")
    arrays = load_weights(path)
    split = {"param": {}, "m": {}, "v": {}}
    for key, arr in arrays.items():
        kind, _, pname = key.partition("/")
        split[kind][pname] = arr
    if not (split["param"].keys() == split["m"].keys() == split["v"].keys()) or step < 0:
        raise MinembedError(f"{where}/{name} is inconsistent (weights and optimiser state differ)")
    return Checkpoint(info, split["param"], split["m"], split["v"], tok)


def remove_checkpoint(model_dir):
    """Delete a run's checkpoint (state.json first, so a half-deleted one is never used)."""
    d = checkpoint_dir(model_dir)
    if not os.path.isdir(d):
        return
    state = os.path.join(d, "state.json")
    if os.path.exists(state):
        os.unlink(state)
        fsync_dir(d)
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


def truncate_log(path, step):
    """Keep the records of steps 1..step of a log.jsonl (and drop a torn last line)."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a line cut short by a crash: nothing after it is trusted
            if not isinstance(rec, dict) or rec.get("step", step + 1) > step:
                break
            keep.append(line)
    atomic_write_bytes(path, b"".join(keep))

