"""The training loop: text-crop positive pairs, InfoNCE, Adam, one code path for both encoders.

    for each step:
        docs   <- the next B documents of this epoch's permutation
        views  <- PairSampler.sample(docs)      2B ragged views: anchors, then positives
        emb    <- encoder.forward(views)        (2B, D)
        loss   <- InfoNCE(emb[:B], emb[B:])
        grads  <- encoder.backward(InfoNCE backward)
        Adam step with linear warm-up, then linear decay to 0

Every random draw is a function of (seed, what it is for, epoch or step):
the epoch's document order of (seed, epoch), the crops, masks and dropout of a
step of (seed, step). So the same seed gives the same model bit for bit, and a
run resumed at step k continues exactly as if it had never stopped.
"""
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import checkpoint as ckpt_mod
from . import corpus as corpus_mod
from . import optim
from .backend import get_xp, to_device, xp_of
from .crops import PairSampler
from .errors import MinembedError
from .loss import infonce_backward, infonce_forward
from .model import Model, atomic_write_bytes, encoder_module, holds_model, save_model
from .tokenize import (DEFAULT_VOCAB_SIZE, TokenizedCorpus, TokenizeProgress, fingerprint,
                       load_tokenizer, mask_token_id, tokenize_corpus, tokenizer_from_str,
                       train_tokenizer)

# per-encoder defaults that differ: the bag model wants a huge learning rate
# (the paper used 0.5; 0.1 with batch 128 was as good or better here, see the
# README) because each row only moves when its token occurs; the transformer
# the usual small one, AdamW, clipping.
MODEL_DEFAULTS = {
    "bag": dict(lr=0.1, batch_size=128, optimizer="adam", weight_decay=0.0, clip=0.0),
    "transformer": dict(lr=5e-4, batch_size=64, optimizer="adamw", weight_decay=0.01, clip=1.0),
}
# --epochs not given: enough epochs for AUTO_STEPS optimiser steps, at least
# AUTO_MIN_EPOCHS and at most AUTO_MAX_EPOCHS. A small corpus needs many passes
# (on the built-in 2.7k documents kNN accuracy still rises up to ~800 steps),
# a large one gets a few epochs (the paper: most of the gain comes in epoch 1).
AUTO_STEPS = {"bag": 800, "transformer": 300}
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 3, 100


def auto_epochs(model, steps_per_epoch):
    """The number of epochs used when --epochs is not given."""
    want = math.ceil(AUTO_STEPS[model] / max(1, steps_per_epoch))
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, want)))
TOKENIZER_SAMPLE_DOCS = 500_000  # documents the tokenizer is trained on, at most


@dataclasses.dataclass
class TrainConfig:
    model: str = "bag"
    dim: int = 256
    epochs: int = None  # None: auto_epochs()
    max_steps: int = 0  # stop (and end the schedule) after this many steps; 0 = all epochs
    batch_size: int = None  # pairs per step
    lr: float = None
    warmup: float = 0.1  # warm-up steps, as a fraction of the first epoch
    optimizer: str = None  # adam | adamw
    weight_decay: float = None
    lazy: bool = True  # row-wise Adam for the embedding table
    clip: float = None  # max global gradient norm (0 = off)
    scale: float = 20.0  # cosine similarity x scale = 1/temperature
    symmetric: bool = False
    seed: int = 0
    vocab_size: int = DEFAULT_VOCAB_SIZE
    crops: str = "auto"  # auto | sentences | spans
    crop_sentences: int = 2
    sentence_min: int = 100
    sentence_max: int = 250
    span_min: float = 0.1
    span_max: float = 0.5
    positives: str = "crops"  # crops | dropout | mask
    mask_frac: float = 0.3
    # transformer only
    layers: int = 4
    heads: int = 4
    ffn: int = 1024
    max_len: int = 128
    dropout: float = 0.1

    def resolved(self):
        """A copy with the per-model defaults filled in, validated."""
        if self.model not in MODEL_DEFAULTS:
            raise MinembedError(f"unknown --model {self.model!r} (expected bag or transformer)")
        c = dataclasses.replace(self)
        for k, v in MODEL_DEFAULTS[self.model].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        c.validate()
        return c

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise MinembedError(msg)
        need(self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}")
        need(self.batch_size >= 2, f"--batch-size must be at least 2 (in-batch negatives), got {self.batch_size}")
        need(self.dim >= 1, f"--dim must be at least 1, got {self.dim}")
        need(self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}")
        need(self.scale > 0 and math.isfinite(self.scale), f"--scale must be positive, got {self.scale}")
        need(0 <= self.warmup <= 1, f"--warmup must be a fraction in [0, 1], got {self.warmup}")
        need(self.optimizer in ("adam", "adamw"), f"--optimizer must be adam or adamw, got {self.optimizer}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.clip >= 0, f"--clip must be >= 0, got {self.clip}")
        need(self.vocab_size >= 64, f"--vocab-size must be at least 64, got {self.vocab_size}")
        need(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        if self.model == "transformer":
            need(self.layers >= 1 and self.heads >= 1 and self.ffn >= 1 and self.max_len >= 2,
                 "--layers, --heads, --ffn must be >= 1 and --max-len >= 2")
            need(self.dim % self.heads == 0, f"--dim ({self.dim}) must be a multiple of --heads ({self.heads})")
        if self.positives == "dropout":
            need(self.model == "transformer" and self.dropout > 0,
                 "--positives dropout needs an encoder with dropout: use --model transformer "
                 "(with --dropout > 0); the bag model has no dropout")

    def encoder_config(self, vocab_size):
        """The hyper-parameters an encoder needs (stored in config.json)."""
        cfg = {"model": self.model, "vocab_size": int(vocab_size), "dim": self.dim,
               "normalize": True}  # encode() returns unit vectors: see Model.encode
        if self.model == "transformer":
            cfg.update(layers=self.layers, heads=self.heads, ffn=self.ffn, max_len=self.max_len,
                       dropout=self.dropout)
        return cfg


def cache_dir():
    from .datasets import default_cache_dir  # standard library only: cheap to import
    return default_cache_dir()


# ---------------------------------------------------------------------------
# the corpus as documents, a tokenizer, and its tokenised form

class CorpusSource:
    """Where documents come from: a file (streamed, re-readable) or the built-in corpus."""

    def __init__(self, path=None, fmt="auto", max_doc_chars=corpus_mod.MAX_DOC_CHARS):
        self.path, self.fmt, self.max_doc_chars = path, fmt, max_doc_chars
        if path is None:
            from . import datasets
            self._texts, _ = datasets.docstrings()
            self.key = "builtin-" + os.path.basename(datasets.cache_path())
            self.name = "built-in corpus (numpy/scipy/scikit-learn docstrings)"
            self.size = self.mtime_ns = self.text_bytes = None
        else:
            st = _stat(path)
            corpus_mod.resolve_format(path, fmt)  # validates the format name
            self.key = "%s|%d|%d|%s|%d" % (os.path.abspath(path), st.st_size, st.st_mtime_ns, fmt,
                                           max_doc_chars)
            self.name = os.fspath(path)
            self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
            # for the progress display (a compressed size says little about the text)
            self.text_bytes = None if self.name.lower().endswith(".gz") else st.st_size
            if st.st_size == 0:
                raise MinembedError(f"corpus file is empty: {path}")

    def texts(self):
        if self.path is None:
            return iter(self._texts)
        return (t for t, _ in corpus_mod.iter_documents(self.path, self.fmt, self.max_doc_chars))


def _stat(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MinembedError(f"corpus file not found: {path}") from None
    if os.path.isdir(path):
        raise MinembedError(f"corpus path is a directory, not a file: {path}")
    return st


def _key_hash(*parts):
    return hashlib.sha1("\n".join(map(str, parts)).encode("utf-8")).hexdigest()[:20]


def get_tokenizer(source, vocab_size, tokenizer_path=None, say=None):
    """The given tokenizer, or one trained on the corpus (cached: training is deterministic)."""
    if tokenizer_path:
        return load_tokenizer(tokenizer_path)
    path = os.path.join(cache_dir(), "tokenizers", _key_hash(source.key, vocab_size) + ".json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return tokenizer_from_str(f.read())
        except (OSError, MinembedError):
            pass  # damaged cache: train again
    if say:
        say(f"training a tokenizer (vocabulary {vocab_size:,}) on {source.name}")
    texts = (t for i, t in zip(range(TOKENIZER_SAMPLE_DOCS), source.texts()))
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, tok.to_str().encode("utf-8"))
    return tok


def get_tokenized(source, tok, say=None, progress=False):
    """The corpus tokenised with ``tok``, from the cache or made now (memory-mapped);
    ``progress`` shows documents, tokens and throughput on stderr while it runs."""
    path = os.path.join(cache_dir(), "corpora", _key_hash(source.key, fingerprint(tok)))
    if os.path.isfile(os.path.join(path, "meta.json")):
        return TokenizedCorpus(path)
    if say:
        say(f"tokenising {source.name}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bar = TokenizeProgress(source.text_bytes) if progress else None
    try:
        tc = tokenize_corpus(tok, source.texts(), path, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if tc.n_docs == 0:
        raise MinembedError(f"{source.name}: no documents found (the file is empty or blank)")
    return tc


# ---------------------------------------------------------------------------
# the output directory

class OutputDir:
    """The model directory being trained into: refuses to overwrite a model
    (or an interrupted run's checkpoint) without ``force``, and holds an
    exclusive lock so two trainings can never write the same directory.
    ``resume``: the directory must hold a checkpoint to continue from."""

    def __init__(self, path, force=False, resume=False):
        self.path = os.fspath(path)
        self._lock = None
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise MinembedError(f"output path exists and is not a directory: {self.path}")
        if os.path.isfile(self.file(".lock")):
            self._acquire()  # a running training is reported as such, before anything else
        try:
            if resume:
                if not os.path.isdir(self.path):
                    raise MinembedError(f"cannot resume: {self.path} does not exist")
            elif os.path.isdir(self.path) and not force:
                if ckpt_mod.has_checkpoint(self.path):
                    raise MinembedError(f"{self.path} holds an interrupted training run: continue it "
                                        f"with 'minembed train --resume {self.path}', or use --force "
                                        f"to start over")
                if holds_model(self.path):
                    raise MinembedError(f"{self.path} already holds a model; use --force to overwrite "
                                        f"it or choose another output directory")
                if [f for f in os.listdir(self.path) if f != ".lock"]:
                    raise MinembedError(f"output directory {self.path} exists and is not empty; "
                                        f"use --force or choose another")
            os.makedirs(self.path, exist_ok=True)
            if self._lock is None:
                self._acquire()
        except BaseException:
            self.close()
            raise

    def _acquire(self):
        self._lock = open(os.path.join(self.path, ".lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise MinembedError(f"{self.path} is being written by another training run (locked)") from None

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self):
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


# ---------------------------------------------------------------------------
# one step

def train_step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
    """Forward and backward of one batch of pairs: (loss, accuracy, grads)."""
    emb, cache = encoder.forward(params, ids, offsets, enc_cfg, train=True, rng=rng)
    b = emb.shape[0] // 2
    loss, lcache = infonce_forward(emb[:b], emb[b:], scale=cfg.scale, symmetric=cfg.symmetric)
    da, dp = infonce_backward(1.0, lcache)
    xp = xp_of(emb)
    grads = encoder.backward(xp.concatenate([da, dp]), cache)
    return loss, lcache["accuracy"], grads


class _StopSignals:
    """While training, Ctrl-C (SIGINT) and SIGTERM (a laptop shutting down) only
    ask the loop to stop at the end of the current step, which then saves a
    checkpoint; a second Ctrl-C aborts at once. Only in the main thread (Python
    delivers signals there); elsewhere signals keep their usual handlers."""

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again to abort)",
              file=sys.stderr)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: set outside Python
        self._old = {}


class Progress:
    """A progress bar on stderr with loss and throughput (click's), or nothing."""

    def __init__(self, total, quiet):
        self.bar = None
        self.status = ""
        if not quiet:
            import click
            self.bar = click.progressbar(length=total, file=sys.stderr, label="training",
                                         show_eta=True, show_pos=True,
                                         item_show_func=lambda _: self.status)
            self.bar.__enter__()

    def update(self, n, status):
        if self.bar is not None:
            self.status = status
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def train(corpus=None, out_dir="minembed_model", cfg=None, fmt="auto", tokenizer_path=None,
          force=False, quiet=False, device="cpu", max_doc_chars=corpus_mod.MAX_DOC_CHARS,
          eval_every=0, eval_fn=None, checkpoint_every=None, resume=False):
    """Train an encoder on a corpus (a path, or None for the built-in corpus) into out_dir.

    Checkpoints (minembed/checkpoint.py) go to ``out_dir/checkpoint`` every
    ``checkpoint_every`` steps (None: every 5 minutes; 0: only when stopped by
    Ctrl-C/SIGTERM, which raises TrainingInterrupted after saving one). On
    completion the model is saved and the checkpoint deleted.

    ``resume=True`` continues the run whose checkpoint is in out_dir, with its
    settings (``cfg``, ``fmt``, ``tokenizer_path``, ``max_doc_chars`` are not
    used) and its corpus: ``corpus`` None means the path recorded in the
    checkpoint; a path given must be the same file (size and modification
    time), e.g. the corpus moved elsewhere. The result is the model an
    uninterrupted run gives, bit for bit.

    Returns the trained Model. Raises MinembedError for anything the user can fix.
    """
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    xp = get_xp(device)
    if not resume:
        cfg = (cfg or TrainConfig()).resolved()
    if checkpoint_every is not None and checkpoint_every < 0:
        raise MinembedError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    out = OutputDir(out_dir, force=force, resume=resume)
    try:
        ckpt = None
        if resume:
            ckpt = ckpt_mod.load_checkpoint(out.path)
            cfg, source = _resume_settings(ckpt, corpus)
            tok = ckpt.tokenizer
            say(f"resuming {out.path} at step {ckpt.step} on {source.name}")
        else:
            ckpt_mod.remove_checkpoint(out.path)  # --force: an older run's checkpoint is void
            source = CorpusSource(corpus, fmt, max_doc_chars)
            tok = get_tokenizer(source, cfg.vocab_size, tokenizer_path, say)
        data = get_tokenized(source, tok, say, progress=not quiet)
        sampler = PairSampler(data, crops=cfg.crops, n_sent=cfg.crop_sentences,
                              sent_min=cfg.sentence_min, sent_max=cfg.sentence_max,
                              span_min=cfg.span_min, span_max=cfg.span_max, positives=cfg.positives,
                              mask_frac=cfg.mask_frac, mask_id=mask_token_id(tok),
                              max_len=cfg.max_len if cfg.model == "transformer" else None)
        data.release_pages()  # the sampler read whole per-sentence arrays once
        st = sampler.stats
        say(f"{st['documents']:,} documents: {st['sentence_crops']:,} with sentence crops, "
            f"{st['token_spans']:,} with token spans, {st['skipped']:,} skipped (too short)")
        n_usable = len(sampler.usable)
        if n_usable < cfg.batch_size:
            raise MinembedError(f"only {n_usable} usable documents, fewer than one batch "
                                f"(--batch-size {cfg.batch_size}); lower --batch-size or add text")
        if cfg.epochs is None:
            cfg.epochs = auto_epochs(cfg.model, n_usable // cfg.batch_size)
        if ckpt is not None and ckpt.info["corpus"]["stats"] != dict(st, tokens=int(data.n_tokens)):
            raise MinembedError(f"cannot resume: {source.name} does not give the documents the run "
                                f"was trained on ({ckpt.info['corpus']['stats']})")
        return _train_loop(cfg, tok, data, sampler, out, xp, say, quiet, source, eval_every, eval_fn,
                           ckpt, checkpoint_every)
    finally:
        out.close()


def _resume_settings(ckpt, corpus):
    """(TrainConfig, CorpusSource) of the run a checkpoint belongs to; MinembedError
    when the corpus is gone or differs."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in ckpt.info["training"].items() if k in fields}).resolved()
    c = ckpt.info["corpus"]
    path = c["path"] if corpus is None else corpus
    try:
        source = CorpusSource(path, c["format"], c["max_doc_chars"])
    except MinembedError as e:
        raise MinembedError(f"cannot resume: {e} (the run's corpus; if it moved, give its new "
                            f"path: minembed train --resume DIR CORPUS)") from None
    if (c["path"] is None) != (path is None) or \
            (path is not None and (source.size, source.mtime_ns) != (c["size"], c["mtime_ns"])):
        was = c["path"] or "the built-in corpus"
        raise MinembedError(f"cannot resume: {source.name} is not the corpus this run was trained on "
                            f"({was}, {c['size']} bytes; its size or modification time differs)")
    return cfg, source


def _train_loop(cfg, tok, data, sampler, out, xp, say, quiet, source, eval_every, eval_fn,
                ckpt=None, checkpoint_every=None):
    encoder = encoder_module(cfg.model)
    enc_cfg = cfg.encoder_config(tok.get_vocab_size())
    config = dict(enc_cfg, format="minembed", format_version=1,
                  training=dataclasses.asdict(cfg), corpus=dict(source=source.name, **sampler.stats))
    if ckpt is None:
        params = encoder.init_params(enc_cfg, np.random.default_rng([cfg.seed, 0]))
        params = {k: to_device(v, xp) for k, v in params.items()}
        state = optim.adam_init(params)
        start, elapsed = 0, 0.0
    else:  # weights, Adam's moments and step: the rest follows from the step number
        params = {k: to_device(v, xp) for k, v in ckpt.params.items()}
        state = {"step": int(ckpt.info["adam_step"]),
                 "m": {k: to_device(v, xp) for k, v in ckpt.m.items()},
                 "v": {k: to_device(v, xp) for k, v in ckpt.v.items()}}
        start, elapsed = ckpt.step, float(ckpt.info.get("elapsed", 0.0))
        ckpt_mod.truncate_log(out.file("log.jsonl"), start)
    steps_per_epoch = len(sampler.usable) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(round(cfg.warmup * steps_per_epoch))
    wd = cfg.weight_decay if cfg.optimizer == "adamw" else 0.0
    c = source
    run_info = {"training": dataclasses.asdict(cfg), "eval_every": eval_every,
                "corpus": {"path": None if c.path is None else os.path.abspath(c.path),
                           "format": c.fmt, "max_doc_chars": c.max_doc_chars, "size": c.size,
                           "mtime_ns": c.mtime_ns, "stats": dict(sampler.stats, tokens=int(data.n_tokens))}}
    log = open(out.file("log.jsonl"), "a" if ckpt is not None else "w")
    bar = Progress(total, quiet)
    bar.update(start, "resumed" if start else "")
    t0 = time.perf_counter() - elapsed  # "time" in the log counts the run's training time
    last_save = time.monotonic()
    step = start
    epoch = order = None

    def save():
        log.flush()
        os.fsync(log.fileno())  # the log holds every step the checkpoint holds
        ckpt_mod.save_checkpoint(out.path, step, params, state, tok,
                                 dict(run_info, elapsed=round(time.perf_counter() - t0, 3)))

    stop = _StopSignals()
    try:
        while step < total:
            # one step; the epoch and the position in it follow from the step number
            e, i = divmod(step, steps_per_epoch)
            if e != epoch:
                epoch = e
                order = np.random.default_rng([cfg.seed, 1, epoch]).permutation(sampler.usable)
            step += 1
            ts = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, 2, step])
            ids, offsets = sampler.sample(order[i * cfg.batch_size:(i + 1) * cfg.batch_size], rng)
            loss, acc, grads = train_step(encoder, params, enc_cfg, to_device(ids, xp),
                                          to_device(offsets, xp), cfg, rng)
            gnorm = optim.clip_grads(grads, cfg.clip)
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                # params are still those of the last good step: keep them
                save_model(out.path, config, params, tok)
                raise MinembedError(
                    f"training diverged: the loss became {loss} at step {step}; the last good "
                    f"weights were saved to {out.path} (try a lower --lr)")
            lr = optim.lr_at(step, total, warmup, cfg.lr)
            optim.adam_step(params, grads, state, lr, weight_decay=wd, lazy=cfg.lazy)
            dt = time.perf_counter() - ts
            rec = {"step": step, "epoch": epoch + 1, "loss": round(loss, 6), "acc": round(acc, 4),
                   "lr": lr, "grad_norm": round(gnorm, 6), "pairs_per_s": round(cfg.batch_size / dt, 1),
                   "time": round(time.perf_counter() - t0, 3)}
            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total):
                rec.update(eval_fn(Model(enc_cfg, params, tok)))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(1, f"loss {loss:.3f}  {cfg.batch_size / dt:,.0f} pairs/s")
            if stop.requested:
                save()
                raise ckpt_mod.TrainingInterrupted(step, out.path)
            if step < total and (checkpoint_every and step % checkpoint_every == 0 or
                                 checkpoint_every is None and
                                 time.monotonic() - last_save >= ckpt_mod.CHECKPOINT_SECONDS):
                save()
                last_save = time.monotonic()
    finally:
        stop.restore()
        bar.close()
        log.close()
    config["training"]["steps"] = total
    config["training"]["seconds"] = round(time.perf_counter() - t0, 2)
    save_model(out.path, config, params, tok)
    ckpt_mod.remove_checkpoint(out.path)  # the run is complete: the model is all there is to keep
    say(f"trained {total} steps in {time.perf_counter() - t0:.1f} s; model saved to {out.path}")
    return Model(config, params, tok, path=out.path)
