"""A training run, as ``minembed train`` does it: the corpus, its tokenizer, the
output directory, progress, checkpoints, Ctrl-C, and the saved model around
the core loop (minembed/train.py).

    model = train("corpus.txt", "model_dir", TrainConfig(model="bag"))

Nothing the user had is lost: a run that fails before training starts leaves
no output directory behind; the directory is locked while a run writes it;
Ctrl-C saves a checkpoint (``minembed train --resume DIR`` continues it, to the
same model bit for bit); a second Ctrl-C aborts and removes what the run made
unless a checkpoint holds progress.

``--members K`` (bag model; 4 by default): the run trains K models of dim / K dimensions one after
another, member k exactly the run with seed + k, and saves their tables side by side as one
(V, dim) table: a bag model of dim dimensions (an ensemble is a bag model; four tables of 64 beat
one of 256 at the same cost: docs/quality.md). Steps, the log and checkpoints count through the
members; a member starts with fresh Adam moments.
"""
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import threading
import time

import numpy as np

from . import checkpoint as ckpt_mod
from ..core import optim
from ..core.backend import get_xp, to_device
from ..core.pairs import PairSampler
from .corpus import MAX_DOC_CHARS, Corpus
from .distributed import collective, make_step
from ..errors import MinembedError
from .model import Model, encoder_module, holds_model, save_model
from .progress import Progress
from .runtime import choose_threads, tuned
from .tokenize import load_tokenizer, mask_token_id
from ..core.train import Diverged, TrainConfig, train_loop

DEAD_STEPS = 20  # a vanished gradient for this many steps in a row: the run is dead
AUTO = {"bag": (40, 800, 5000), "transformer": (10, 400, 1500)}  # no --epochs: (epochs, min, max steps)


def auto_epochs(model, spe, members=1):
    """Epochs for AUTO's number of epochs, kept within its range of steps (spe: steps per epoch);
    with several members, each gets half of each (its table is narrower: 4 x 64 columns cost
    about what 256 did)."""
    epochs, lo, hi = (n // (2 if members > 1 else 1) for n in AUTO[model])
    return max(1, math.ceil(min(max(epochs * spe, lo), hi) / max(1, spe)))


class OutputDir:
    """The model directory a run writes: refuses to overwrite a model (or an
    interrupted run's checkpoint) without ``force``; ``open()`` creates it and
    takes an exclusive lock, so two runs never write one directory."""

    def __init__(self, path, force=False, resume=False, check=True):
        self.path, self._lock, self.created = os.fspath(path), None, False
        if check:  # (only the process that writes it: rank 0 of many)
            self._check(force, resume)

    def _check(self, force, resume):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise MinembedError(f"output path exists and is not a directory: {self.path}")
        if resume and not os.path.isdir(self.path):
            raise MinembedError(f"cannot resume: {self.path} does not exist")
        self._check_unlocked()
        if not resume and os.path.isdir(self.path) and not force:
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

    def _check_unlocked(self):
        lock = os.path.join(self.path, ".lock")
        if os.path.isfile(lock):
            with open(lock) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise MinembedError(f"{self.path} is being written by another training run "
                                        f"(locked)") from None

    def open(self):
        self.created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        self._lock = open(self.file(".lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise MinembedError(f"{self.path} is being written by another training run (locked)") from None

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self, keep=True):
        """Unlock; with keep=False remove what this run wrote (all of it if it made the directory)."""
        if self._lock is None:
            return
        if not keep:
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for name in ("log.jsonl", ckpt_mod.CHECKPOINT_DIR):
                    shutil.rmtree(self.file(name), ignore_errors=True) if name == ckpt_mod.CHECKPOINT_DIR \
                        else _unlink(self.file(name))
        _unlink(self.file(".lock"))
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class StopSignals:
    """While training, Ctrl-C (SIGINT) and SIGTERM (a laptop shutting down) only
    ask the loop to stop at the end of the current step, which then saves a
    checkpoint; a second Ctrl-C aborts at once. Only in the main thread (Python
    delivers signals there); elsewhere signals keep their usual handlers."""

    def __init__(self, loud=True):
        self.requested, self._old, self.loud = False, {}, loud
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.loud:  # (of many processes, rank 0 saves the checkpoint)
            print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again to abort)",
                  file=sys.stderr)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: set outside Python
        self._old = {}


def train(corpus=None, out_dir="minembed_model", cfg=None, fmt="auto", tokenizer_path=None,
          force=False, quiet=False, device="cpu", max_doc_chars=MAX_DOC_CHARS, eval_every=0,
          eval_fn=None, checkpoint_every=None, resume=False, encoding="utf-8", errors="strict",
          comm=None, micro_batch=0, threads=None):
    """Train an encoder on a corpus (a path, or None for the built-in corpus) into out_dir.

    Checkpoints (minembed/checkpoint.py) go to ``out_dir/checkpoint`` every
    ``checkpoint_every`` steps (None: every 5 minutes; 0: only when stopped by
    Ctrl-C/SIGTERM, which raises TrainingInterrupted after saving one). On
    completion the model is saved and the checkpoint deleted.

    ``resume=True`` continues the run whose checkpoint is in out_dir, with its
    settings and its corpus (``corpus`` None: the path recorded in the
    checkpoint; a path given must be the same file, e.g. moved). The result
    is the model an uninterrupted run gives, bit for bit.

    ``comm`` (minembed.distributed.Comm): train on its R processes together, each
    encoding B/R pairs of every batch; rank 0 alone writes the output directory.
    ``micro_batch``: encode that many pairs at a time (gradient caching: less memory,
    the same gradient). ``threads``: BLAS threads per process (None: MINEMBED_THREADS, else
    chosen for the model: minembed/runtime.py; a resumed run: the count it ran with, which
    can change the transformer's last bits).

    Returns the trained Model. Raises MinembedError for anything the user can fix.
    """
    lead = comm is None or comm.rank == 0
    quiet, eval_fn = (quiet, eval_fn) if lead else (True, None)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    xp = get_xp(device)
    if checkpoint_every is not None and checkpoint_every < 0:
        raise MinembedError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    args = (corpus, out_dir, cfg, fmt, tokenizer_path, force, quiet, max_doc_chars, resume, encoding,
            errors, lead, say, comm)
    if comm is None:
        out, ckpt, cfg, source, tok, data, sampler = _prepare(None, *args)[0]
        out.open()
    else:  # rank 0 first (it fills the caches the others read), and its checkpoint to all
        out, ckpt, cfg, source, tok, data, sampler = comm.lead_first(lambda c: _prepare(c, *args))
        comm.lead_first(lambda _: (out.open() if lead else None, None))
    if ckpt is not None:  # the run's own count: BLAS's last bits depend on it
        default = ckpt.info.get("blas_threads")
    elif comm is not None and cfg.model == "transformer":  # the ranks share the machine
        default = max(1, (os.cpu_count() or 1) // comm.size)
    else:
        default = None
    n_threads = choose_threads(cfg.model, threads, default)
    keep = False
    try:
        with tuned(cfg.model, n_threads):
            model = _run(cfg, tok, data, sampler, out, xp, say, quiet, source, eval_every, eval_fn,
                         ckpt, checkpoint_every, comm, micro_batch, n_threads)
        keep = True
        return model
    except ckpt_mod.TrainingInterrupted:
        keep = True  # a checkpoint was saved
        raise
    except MinembedError as e:
        keep = getattr(e, "saved", False)  # a diverged run's last good weights
        raise
    finally:
        out.close(keep=keep or ckpt is not None or ckpt_mod.has_checkpoint(out.path))


def _prepare(ckpt, corpus, out_dir, cfg, fmt, tokenizer_path, force, quiet, max_doc_chars, resume,
             encoding, errors, lead, say, comm):
    """Everything before the first step: ((out, ckpt, cfg, source, tok, data, sampler), ckpt)."""
    out = OutputDir(out_dir, force=force, resume=resume, check=lead)
    if resume:
        ckpt = ckpt or ckpt_mod.load_checkpoint(out.path)
        cfg, source = _resume_settings(ckpt, corpus)
        tok = ckpt.tokenizer
        say(f"resuming {out.path} at step {ckpt.step} on {source.name}")
    else:
        cfg = (cfg or TrainConfig()).resolved()
        if cfg.model == "transformer" and cfg.bag_init and cfg.positives == "dropout":
            say("--positives dropout: the token table starts random (a bag model trained first "
                "would have learned from crops)")
            cfg = dataclasses.replace(cfg, bag_init=False)
        source = Corpus(corpus, fmt, max_doc_chars, encoding, errors)
        n = sum(1 for _, _ in zip(range(2), source.texts()))  # before any slow work
        if n < 2:
            raise MinembedError(f"{source.name}: no documents found (the file is blank)" if n == 0 else
                                f"{source.name}: only one document; contrastive training needs at "
                                f"least 2 (in-batch negatives)")
        tok = load_tokenizer(tokenizer_path) if tokenizer_path else source.tokenizer(cfg.vocab_size, say)
    data = source.tokenized(tok, say, progress=not quiet)
    sampler = PairSampler(data, cfg, mask_token_id(tok))
    data.release_pages()  # the sampler read whole per-sentence arrays once
    st = sampler.stats
    say(f"{st['documents']:,} documents: {st['sentence_crops']:,} with sentence crops, "
        f"{st['token_spans']:,} with token spans, {st['skipped']:,} skipped (too short)")
    n_usable = len(sampler.usable)
    if n_usable < 2:
        raise MinembedError(f"{source.name}: only {n_usable} document(s) long enough for two views; "
                            f"contrastive training needs at least 2 (in-batch negatives)")
    if n_usable < cfg.batch_size:
        say(f"only {n_usable} usable documents: batch size lowered from {cfg.batch_size} to {n_usable}")
        cfg = dataclasses.replace(cfg, batch_size=n_usable)
    if cfg.epochs is None:
        cfg = dataclasses.replace(cfg, epochs=auto_epochs(cfg.model, n_usable // cfg.batch_size, cfg.members))
    if ckpt is not None and ckpt.info["corpus"]["stats"] != dict(st, tokens=int(data.n_tokens)):
        raise MinembedError(f"cannot resume: {source.name} does not give the documents the run "
                            f"was trained on ({ckpt.info['corpus']['stats']})")
    if comm is not None and cfg.batch_size < comm.size:
        raise MinembedError(f"a batch of {cfg.batch_size} pairs cannot be shared by {comm.size} "
                            f"processes (--batch-size at least {comm.size})")
    return (out, ckpt, cfg, source, tok, data, sampler), ckpt


def _resume_settings(ckpt, corpus):
    """(TrainConfig, Corpus) of the run a checkpoint belongs to; MinembedError
    when the corpus is gone or differs."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{"members": 1, **{k: v for k, v in ckpt.info["training"].items() if k in fields}})
    cfg = cfg.resolved()  # (a run from before --members: one table)
    c = ckpt.info["corpus"]
    path = c["path"] if corpus is None else corpus
    try:
        source = Corpus(path, c["format"], c["max_doc_chars"], c.get("encoding", "utf-8"),
                        c.get("errors", "strict"))
    except MinembedError as e:
        raise MinembedError(f"cannot resume: {e} (the run's corpus; if it moved, give its new "
                            f"path: minembed train --resume DIR CORPUS)") from None
    if (c["path"] is None) != (path is None) or \
            (path is not None and (source.identity["size"], source.identity["mtime_ns"]) !=
             (c["size"], c["mtime_ns"])):
        was = c["path"] or "the built-in corpus"
        raise MinembedError(f"cannot resume: {source.name} is not the corpus this run was trained on "
                            f"({was}, {c['size']} bytes; its size or modification time differs)")
    return cfg, source


def _bag_table(cfg, data, tok, xp, quiet, comm):
    """The transformer's first token table: a bag model of its dimension trained first on the
    same corpus (the transformer's pairs and crops, the bag model's other defaults), its rows
    rescaled to a fresh table's std (0.02). From scratch the transformer learns what tokens mean
    through attention alone; from a bag table it starts knowing it (with _start_as_the_bag,
    docs/quality.md: +10 to +19 kNN points)."""
    bcfg = TrainConfig(dim=cfg.dim, seed=cfg.seed, vocab_size=cfg.vocab_size, crops=cfg.crops,
                       crop_sentences=cfg.crop_sentences, sentence_min=cfg.sentence_min,
                       sentence_max=cfg.sentence_max, span_min=cfg.span_min, span_max=cfg.span_max,
                       positives=cfg.positives, mask_frac=cfg.mask_frac, members=1)  # rest, crops or mask
    bcfg = bcfg.resolved()
    sampler = PairSampler(data, bcfg, mask_token_id(tok))
    bcfg = dataclasses.replace(bcfg, batch_size=min(bcfg.batch_size, len(sampler.usable)))
    spe = len(sampler.usable) // bcfg.batch_size
    bcfg = dataclasses.replace(bcfg, epochs=auto_epochs("bag", spe))
    enc_cfg = bcfg.encoder_config(tok.get_vocab_size())
    bag = encoder_module("bag")
    params = {k: to_device(v, xp) for k, v in bag.init_params(enc_cfg, np.random.default_rng([cfg.seed, 3])).items()}
    bar = Progress(spe * bcfg.epochs, "bag model for the token table", "step", quiet=quiet)
    try:
        train_loop(bag, params, optim.adam_init(params), sampler, bcfg, enc_cfg, spe * bcfg.epochs,
                   on_step=lambda step, r: bar.update(1))
    except Diverged as e:
        raise MinembedError(f"the bag model for the transformer's token table: {e} (try --no-bag-init)")
    finally:
        bar.close()
    table = params["tok_emb"]
    if comm is not None:  # the same table on every process, whatever their BLAS did
        table = comm.allreduce(table) / comm.size
    return table * (0.02 / float(table.std()))


def _start_as_the_bag(params):
    """With a bag model's table the transformer starts as that bag model: every block's output
    projections zeroed, so each residual branch adds 0 and the blocks begin as the identity
    (their first steps train the projections, then the rest), and the position table at a
    tenth of its std, so that the tokens make the vector, not noise of their size. Random
    blocks cost 15-16 kNN points before the first step (built-in corpus, fortunes), which
    training at 5e-4 never won back (71.1 / 38.6); this start at 3e-5 ends at 75.7 / 43.4."""
    for name, p in params.items():
        if name.endswith(("attn.out.w", "mlp.proj.w")):
            p[...] = 0
    params["pos_emb"] *= 0.1


def _run(cfg, tok, data, sampler, out, xp, say, quiet, source, eval_every, eval_fn, ckpt,
         checkpoint_every, comm=None, micro_batch=0, n_threads=1):
    lead = comm is None or comm.rank == 0
    encoder = encoder_module(cfg.model)
    K, enc_cfg = cfg.members, cfg.encoder_config(tok.get_vocab_size())  # --members K: K bag tables
    width = cfg.dim // K  # a member's columns
    member_cfg = dict(enc_cfg, dim=width)
    config = dict(enc_cfg, format="minembed", format_version=1, training=dataclasses.asdict(cfg),
                  corpus=dict(source=source.name, **sampler.stats))
    if ckpt is None:  # member k starts as a run with seed + k would
        inits = [encoder.init_params(member_cfg, np.random.default_rng([cfg.seed + k, 0])) for k in range(K)]
        params = {n: to_device(np.concatenate([p[n] for p in inits], axis=1) if K > 1 else v, xp)
                  for n, v in inits[0].items()}
        if cfg.model == "transformer" and cfg.bag_init:
            params["tok_emb"] = _bag_table(cfg, data, tok, xp, quiet, comm)
            _start_as_the_bag(params)
        adam, start, elapsed = optim.adam_init(params), 0, 0.0
    else:  # weights, Adam's moments and step: the rest follows from the step number
        params = {k: to_device(v, xp) for k, v in ckpt.params.items()}
        adam = {"step": int(ckpt.info["adam_step"]), "m": {k: to_device(v, xp) for k, v in ckpt.m.items()},
                "v": {k: to_device(v, xp) for k, v in ckpt.v.items()}}
        start, elapsed = ckpt.step, float(ckpt.info.get("elapsed", 0.0))
        if lead:
            ckpt_mod.truncate_log(out.file("log.jsonl"), start)
    spe = len(sampler.usable) // cfg.batch_size
    T = spe * cfg.epochs if not cfg.max_steps else min(spe * cfg.epochs, cfg.max_steps)  # steps a member
    total = K * T
    run_info = {"training": dataclasses.asdict(cfg), "eval_every": eval_every, "blas_threads": n_threads,
                "corpus": dict(source.identity, stats=dict(sampler.stats, tokens=int(data.n_tokens)))}
    log = open(out.file("log.jsonl") if lead else os.devnull, "a" if ckpt is not None else "w")
    bar = Progress(total, "training", "step", done=start, quiet=quiet)
    t0 = time.perf_counter() - elapsed  # "time" in the log counts the run's training time
    last_save, dead, peak, first = [time.monotonic()], [0], [0.0], [0.0]
    stop = StopSignals(loud=lead)

    member = {"k": start // T if start < total else K - 1}
    cur, cur_adam = params, adam  # the member in training: with K > 1, copies of its columns

    def sync():  # the member's weights and moments into its columns of the run's arrays
        if K > 1:
            for arrays, new in ((params, cur), (adam["m"], cur_adam["m"]), (adam["v"], cur_adam["v"])):
                arrays["tok_emb"][:, member["cols"]] = new["tok_emb"]
            adam["step"] = cur_adam["step"]

    def save(step):
        sync()
        if not lead:
            return
        log.flush()
        os.fsync(log.fileno())  # the log holds every step the checkpoint holds
        ckpt_mod.save_checkpoint(out.path, step, params, adam, tok,
                                 dict(run_info, elapsed=round(time.perf_counter() - t0, 3)))
        last_save[0] = time.monotonic()

    def on_step(step, r):
        step += member["k"] * T  # the run's step; train_loop counts the member's
        rec = {"step": step, **({"member": member["k"] + 1} if K > 1 else {}), "epoch": r["epoch"],
               "loss": round(r["loss"], 6), "acc": round(r["acc"], 4), "lr": r["lr"],
               "grad_norm": round(r["grad_norm"], 6),
               "pairs_per_s": round(cfg.batch_size / r["seconds"], 1),
               "time": round(time.perf_counter() - t0, 3)}
        if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total):
            rec.update(eval_fn(Model(member_cfg, cur, tok)))
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.update(1, f"loss {r['loss']:.3f}")
        if step == start + 1:
            first[0] = time.perf_counter()
        if step == start + 6 and total - step > 20:  # from steps 2-6 (the first one warms up)
            say(f"\nestimated training time: {(total - step) * (time.perf_counter() - first[0]) / 5 / 60:.1f} "
                f"min for {total - step:,} more steps")
        # dead: the gradient norm ~0 (1e-4 of its largest so far) for DEAD_STEPS steps in a row
        peak[0] = max(peak[0], r["grad_norm"])
        dead[0] = dead[0] + 1 if r["grad_norm"] <= 1e-4 * peak[0] else 0
        if dead[0] >= DEAD_STEPS:
            raise collective(MinembedError(  # (every process sees the same gradient norm)
                f"training is dead: the gradient vanished ({r['grad_norm']:.1e}, from {peak[0]:.1e}) for "
                f"{DEAD_STEPS} steps in a row at step {step}; the learning rate {cfg.lr:g} is probably "
                f"far too high (try a lower --lr)"))
        if comm is not None:  # Ctrl-C on any process stops all, after this step
            stop.requested = comm.any(stop.requested)
        if stop.requested:
            save(step)
            raise collective(ckpt_mod.TrainingInterrupted(step, out.path))  # all stop here
        if step < total and (checkpoint_every and step % checkpoint_every == 0 or checkpoint_every
                             is None and time.monotonic() - last_save[0] >= ckpt_mod.CHECKPOINT_SECONDS):
            save(step)

    try:
        for k in range(member["k"], K):
            member.update(k=k, cols=slice(k * width, (k + 1) * width))  # its columns, for sync() too
            cols, first_step = member["cols"], max(0, start - k * T)
            if K > 1:  # a member starts with fresh moments (zeros in its columns until it trains)
                cur = {"tok_emb": xp.ascontiguousarray(params["tok_emb"][:, cols])}
                cur_adam = {"step": adam["step"] if first_step else 0, **{
                    mv: {"tok_emb": xp.ascontiguousarray(adam[mv]["tok_emb"][:, cols])} for mv in "mv"}}
            train_loop(encoder, cur, cur_adam, sampler, dataclasses.replace(cfg, seed=cfg.seed + k), member_cfg,
                       T, first_step, on_step, make_step(comm, micro_batch) if comm is not None or micro_batch else None)
            sync()
    except Diverged as e:  # params are still those of the last good step: keep them
        sync()
        if lead:
            save_model(out.path, config, params, tok)
        err = MinembedError(f"{e}; the last good weights were saved to {out.path} (try a lower --lr)")
        err.saved = err.collective = True  # (every process diverges at this step)
        raise err from None
    finally:
        stop.restore()
        bar.close()
        log.close()
    config["training"].update(steps=total, seconds=round(time.perf_counter() - t0, 2), blas_threads=n_threads)
    if not lead:
        return Model(config, params, tok)
    save_model(out.path, config, params, tok)
    ckpt_mod.remove_checkpoint(out.path)  # the run is complete: the model is all there is to keep
    say(f"trained {total} steps in {time.perf_counter() - t0:.1f} s; model saved to {out.path}")
    return Model(config, params, tok, path=out.path)

