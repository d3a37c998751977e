"""A training run, as ``minembed train`` does it: the corpus, its tokenizer, the output
directory, progress, checkpoints, Ctrl-C, and the saved model around the textbook's loop
(minembed/core/train.py).

    model = train("corpus.txt", "model_dir", TrainConfig(model="bag"), quiet=True)

``cfg`` (a TrainConfig) is the model's settings; the other keywords are the run's (RunOptions).
Nothing the user had is lost: a run that fails before training starts leaves no output directory
behind; the directory is locked while a run writes it (outdir.py); Ctrl-C saves a checkpoint
(``minembed train --resume DIR`` continues it, to the same model bit for bit); a second Ctrl-C
aborts and removes what the run made unless a checkpoint holds progress. The pieces: settings.py
(the settings), hook.py (after each step), members.py (--members), warmstart.py (the
transformer's bag start), gradcache.py (a step in parts: many processes, micro-batches).
"""
import dataclasses
import os
import sys
import time

import numpy as np

from ..core import optim
from ..core.backend import to_device
from ..core.pairs import PairSampler
from ..core.train import Diverged
from ..errors import MinembedError
from ..fast import prefetch
from . import checkpoint as ckpt_mod
from .corpus import MAX_DOC_CHARS, Corpus
from .gradcache import make_step
from .hook import StepHook, StopSignals, failed
from .members import Members
from .model import Model, encoder_module, initial_params, unknown_weighs_nothing
from .modeldir import save_model
from .outdir import OutputDir
from .progress import Progress
from .quality import assess, check_vitals, held_out_documents, quality_line
from .runtime import choose_threads, get_xp, prefetch_batches, tuned
from .settings import TrainConfig, auto_epochs
from .tokenize import load_tokenizer, mask_token_id
from .warmstart import bag_table, start_as_the_bag


@dataclasses.dataclass
class RunOptions:
    """How a run goes, beside the model's settings: the corpus file's format, the output, what
    it reports, where it computes. (``minembed train``'s options other than a TrainConfig's.)"""
    fmt: str = "auto"                 # the corpus: lines, paragraphs, jsonl or auto
    encoding: str = "utf-8"
    errors: str = "strict"
    max_doc_chars: int = MAX_DOC_CHARS
    tokenizer_path: str = None        # a tokenizer.json instead of one trained on the corpus
    force: bool = False               # overwrite a model in the output directory
    resume: bool = False              # continue the run whose checkpoint is there
    quiet: bool = False
    device: str = "cpu"
    threads: int = None               # BLAS threads (None: MINEMBED_THREADS, else runtime.py)
    checkpoint_every: int = None      # steps (None: every 5 minutes; 0: only on Ctrl-C)
    eval_every: int = 0               # steps between kNN accuracies in the log (labelled corpus)
    # model -> {name: value}, instead of kNN on the corpus's labels
    eval_fn: object = None
    micro_batch: int = 0              # encode this many pairs at a time (0: all)


@dataclasses.dataclass
class Setup:
    """Everything before the first step."""
    out: OutputDir
    ckpt: object                      # the checkpoint resumed from, or None
    cfg: TrainConfig                  # resolved, epochs set
    source: Corpus
    tok: object
    data: object                      # the TokenizedCorpus
    sampler: PairSampler
    steps_per_epoch: int
    eval_every: int                   # the option's, or a resumed run's own
    labelled: tuple = None            # (texts, labels) for kNN in the log
    held: list = None                 # the documents each member keeps out of training (quality.py)
    kept: list = None                 # and those it trains on (one array: every member's)


def train(corpus=None, out_dir="minembed_model", cfg=None, comm=None, **options):
    """Train an encoder on a corpus (a path, or None for the built-in corpus) into out_dir;
    ``options``: RunOptions's fields. Returns the trained Model; MinembedError for anything the
    user can fix.

    Checkpoints (checkpoint.py) go to ``out_dir/checkpoint``; on completion the model is saved
    and the checkpoint deleted. ``resume=True`` continues the run whose checkpoint is in out_dir,
    with its settings and its corpus (``corpus`` None: the path recorded in the checkpoint; a
    path given must be the same file, e.g. moved): the model an uninterrupted run gives, bit for
    bit. ``comm`` (distributed.Comm): train on its R processes together, each encoding B/R pairs
    of every batch; rank 0 alone writes the output directory."""
    opts = RunOptions(**options)
    lead = comm is None or comm.rank == 0
    if not lead:
        opts = dataclasses.replace(opts, quiet=True, eval_every=0)
    say = (lambda msg: None) if opts.quiet else (lambda msg: print(msg, file=sys.stderr))
    xp = get_xp(opts.device)
    if opts.checkpoint_every is not None and opts.checkpoint_every < 0:
        raise MinembedError(f"--checkpoint-every must be >= 0, got {opts.checkpoint_every}")
    if comm is None:
        setup = _prepare(None, corpus, out_dir, cfg, opts, lead, say, comm)[0]
        setup.out.open()
    else:  # rank 0 first (it fills the caches the others read), and its checkpoint to all
        setup = comm.lead_first(lambda c: _prepare(c, corpus, out_dir, cfg, opts, lead, say, comm))
        comm.lead_first(lambda _: (setup.out.open() if lead else None, None))
    threads = _threads(setup, opts, comm)
    if comm is not None:
        say(f"{comm.size} processes train together (MPI), each encoding its share of every "
            f"batch; rank 0 writes {setup.out.path}")
    keep = False
    try:
        with tuned(setup.cfg.model, threads):
            model = _run(setup, opts, xp, say, comm, threads)
        keep = True
        return model
    except ckpt_mod.TrainingInterrupted:
        keep = True  # a checkpoint was saved
        raise
    except MinembedError as e:
        if getattr(e, "failed_run", False) and setup.ckpt is None and lead:
            ckpt_mod.remove_checkpoint(setup.out.path)  # its checkpoints lead back to the failure
        raise
    finally:
        setup.out.close(keep=keep or setup.ckpt is not None
                        or ckpt_mod.has_checkpoint(setup.out.path))


def _threads(setup, opts, comm):
    """BLAS threads: the option, else a resumed run's own count (the last bits depend on it),
    else a rank's share of the machine for the transformer on many processes, else chosen."""
    if setup.ckpt is not None:
        default = setup.ckpt.info.get("blas_threads")
    elif comm is not None and setup.cfg.model == "transformer":  # the ranks share the machine
        default = max(1, (os.cpu_count() or 1) // comm.size)
    else:
        default = None
    return choose_threads(setup.cfg.model, opts.threads, default)


def _prepare(ckpt, corpus, out_dir, cfg, opts, lead, say, comm):
    """(Setup, ckpt): the output directory checked, the corpus read and tokenised, the pairs."""
    out = OutputDir(out_dir, force=opts.force, resume=opts.resume, check=lead)
    eval_every = opts.eval_every if lead else 0
    if opts.resume:
        ckpt = ckpt or ckpt_mod.load_checkpoint(out.path)
        cfg, source = _resume_settings(ckpt, corpus)
        tok = ckpt.tokenizer
        eval_every = ckpt.info.get("eval_every", 0) if lead else 0  # as the run did
        say(f"resuming {out.path} at step {ckpt.step} on {source.name}")
    else:
        cfg = (cfg or TrainConfig()).resolved()
        if cfg.model == "transformer" and cfg.bag_init and cfg.positives == "dropout":
            say("--positives dropout: the token table starts random (a bag model trained first "
                "would have learned from crops)")
            cfg = dataclasses.replace(cfg, bag_init=False)
        source = Corpus(corpus, opts.fmt, opts.max_doc_chars, opts.encoding, opts.errors)
        _check_two_documents(source)
    labelled = source.labelled("--eval-every") if eval_every and opts.eval_fn is None else None
    if not opts.resume:
        tok = (load_tokenizer(opts.tokenizer_path) if opts.tokenizer_path
               else source.tokenizer(cfg.vocab_size, say, cfg.tokens))
    data = source.tokenized(tok, say, progress=not opts.quiet)
    sampler = PairSampler(data, cfg, mask_token_id(tok))
    data.release_pages()  # the sampler read whole per-sentence arrays once
    held = [held_out_documents(sampler.usable, cfg.seed + k) for k in range(cfg.members)] \
        if cfg.held_out else []
    kept = [np.setdiff1d(sampler.usable, h) for h in held] or [sampler.usable]  # each member's
    sampler.usable = kept[0]
    cfg = _fit_to_corpus(cfg, sampler, source, say)
    st = sampler.stats
    if ckpt is not None and ckpt.info["corpus"]["stats"] != dict(st, tokens=int(data.n_tokens)):
        raise MinembedError(f"cannot resume: {source.name} does not give the documents the run "
                            f"was trained on ({ckpt.info['corpus']['stats']})")
    if comm is not None and cfg.batch_size < comm.size:
        raise MinembedError(f"a batch of {cfg.batch_size} pairs cannot be shared by {comm.size} "
                            f"processes (--batch-size at least {comm.size})")
    spe = sampler.steps_per_epoch(cfg.batch_size)
    if cfg.epochs is None:
        cfg = dataclasses.replace(cfg, epochs=auto_epochs(cfg.model, spe, cfg.members))
    return Setup(out, ckpt, cfg, source, tok, data, sampler, spe, eval_every, labelled,
                 held, kept), ckpt


def _check_two_documents(source):
    n = sum(1 for _, _ in zip(range(2), source.texts()))  # before any slow work
    if n < 2:
        raise MinembedError(f"{source.name}: no documents found (the file is blank)" if n == 0 else
                            f"{source.name}: only one document; contrastive training needs at "
                            f"least 2 (in-batch negatives)")


def _fit_to_corpus(cfg, sampler, source, say):
    """The documents the pairs can use, said; a batch no larger than they are."""
    st = sampler.stats
    say(f"{st['documents']:,} documents: {st['sentence_crops']:,} with sentence crops, "
        f"{st['token_spans']:,} with token spans, {st['skipped']:,} skipped (too short)")
    n_usable = len(sampler.usable)
    if n_usable < 2:
        raise MinembedError(f"{source.name}: only {n_usable} document(s) long enough for two "
                            f"views; contrastive training needs at least 2 (in-batch negatives)")
    if n_usable < cfg.batch_size:
        say(f"only {n_usable} usable documents: batch size lowered from {cfg.batch_size} to "
            f"{n_usable}")
        cfg = dataclasses.replace(cfg, batch_size=n_usable)
    return cfg


def _resume_settings(ckpt, corpus):
    """(TrainConfig, Corpus) of the run a checkpoint belongs to; MinembedError
    when the corpus is gone or differs."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{"members": 1, "held_out": False, "tokens": "subwords",  # (older runs)
                         **{k: v for k, v in ckpt.info["training"].items() if k in fields}})
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
        raise MinembedError(f"cannot resume: {source.name} is not the corpus this run was trained "
                            f"on ({was}, {c['size']} bytes; its size or modification time differs)")
    return cfg, source


def _start(setup, enc_cfg, xp, quiet, comm):
    """(params, adam, start step, seconds already trained): fresh, or from the checkpoint."""
    cfg, ckpt = setup.cfg, setup.ckpt
    if ckpt is not None:  # weights, Adam's moments and step: the rest follows from the step number
        params = {k: to_device(v, xp) for k, v in ckpt.params.items()}
        adam = {"step": int(ckpt.info["adam_step"]),
                "m": {k: to_device(v, xp) for k, v in ckpt.m.items()},
                "v": {k: to_device(v, xp) for k, v in ckpt.v.items()}}
        return params, adam, ckpt.step, float(ckpt.info.get("elapsed", 0.0))
    params = {n: to_device(v, xp)
              for n, v in initial_params(enc_cfg, cfg.seed, cfg.members).items()}
    if cfg.model == "transformer" and cfg.bag_init:
        params["tok_emb"] = bag_table(cfg, setup.data, setup.tok, xp, quiet, comm,
                                      setup.sampler.usable)
        start_as_the_bag(params)
    return params, optim.adam_init(params), 0, 0.0


def _evaluator(setup, opts, members, member_cfg):
    """evaluate() -> {name: value} of the model as it is now, for the log (or None)."""
    if not setup.eval_every:
        return None
    if opts.eval_fn is None:
        from .evaluate import knn_scores
        texts, labels = setup.labelled
        fn = lambda model: knn_scores(model.encode(texts), labels)  # noqa: E731
    else:
        fn = opts.eval_fn
    return lambda: fn(Model(member_cfg, members.current, setup.tok))


def _run(setup, opts, xp, say, comm, n_threads):
    cfg, tok, out, lead = setup.cfg, setup.tok, setup.out, comm is None or comm.rank == 0
    enc_cfg = cfg.encoder_config(tok.get_vocab_size())
    params, adam, start, elapsed = _start(setup, enc_cfg, xp, opts.quiet, comm)
    if setup.ckpt is not None and lead:
        ckpt_mod.truncate_log(out.file("log.jsonl"), start)
    T = setup.steps_per_epoch * cfg.epochs if not cfg.max_steps else \
        min(setup.steps_per_epoch * cfg.epochs, cfg.max_steps)  # steps a member
    members = Members(params, adam, cfg.members, T, xp, setup.kept)
    run_info = {"training": dataclasses.asdict(cfg), "eval_every": setup.eval_every,
                "blas_threads": n_threads,
                "corpus": dict(setup.source.identity,
                               stats=dict(setup.sampler.stats, tokens=int(setup.data.n_tokens)))}
    log = open(out.file("log.jsonl") if lead else os.devnull,
               "a" if setup.ckpt is not None else "w")
    hook = StepHook(cfg.members * T, start, cfg.batch_size, cfg.lr, log,
                    Progress(cfg.members * T, "training", "step", done=start,
                             quiet=opts.quiet), say,
                    members=cfg.members, eval_every=setup.eval_every, out_dir=out.path,
                    evaluate=_evaluator(setup, opts, members, dict(enc_cfg, dim=members.width)),
                    checkpoint_every=opts.checkpoint_every, stop=StopSignals(loud=lead), comm=comm,
                    # "time" in the log counts the run's training time
                    t0=time.perf_counter() - elapsed)

    def save(step):
        members.sync()
        if lead:
            log.flush()
            os.fsync(log.fileno())  # the log holds every step the checkpoint holds
            ckpt_mod.save_checkpoint(out.path, step, params, adam, tok,
                                     dict(run_info,
                                          elapsed=round(time.perf_counter() - hook.t0, 3)))
    hook.save = save
    step_fn = make_step(comm, opts.micro_batch) if comm is not None or opts.micro_batch else None
    try:
        members.train(encoder_module(cfg.model), setup.sampler, cfg, enc_cfg, start, hook, step_fn,
                      prefetch.ahead if prefetch_batches(opts.device) else None)
    except Diverged as e:  # a failed run: no model (every process diverges at this step)
        raise failed(f"{e}; no model was saved (try a lower --lr than {cfg.lr:g})") from None
    finally:
        hook.stop.restore()
        hook.bar.close()
        log.close()
    return _finish(setup, enc_cfg, params, hook, n_threads, lead, say)


def _config(setup, enc_cfg):
    """config.json: the encoder's hyper-parameters, how it was trained, on what."""
    return dict(enc_cfg, format="minembed", format_version=1,
                training=dataclasses.asdict(setup.cfg),
                corpus=dict(source=setup.source.name, **setup.sampler.stats))


def _finish(setup, enc_cfg, params, hook, n_threads, lead, say):
    """The model checked, saved (rank 0), the checkpoint removed: the model is all there is to
    keep."""
    unknown_weighs_nothing(params, enc_cfg, setup.tok)
    check_vitals(Model(_config(setup, enc_cfg), params, setup.tok), setup.source, setup.cfg.lr)
    config = _config(setup, enc_cfg)
    config["training"].update(steps=hook.total, steps_per_epoch=setup.steps_per_epoch,
                              seconds=round(time.perf_counter() - hook.t0, 2),
                              blas_threads=n_threads)
    if not lead:
        return Model(config, params, setup.tok)
    say(f"trained {hook.total} steps in {time.perf_counter() - hook.t0:.1f} s")
    config["quality"] = assess(Model(config, params, setup.tok), setup.source, setup.held,
                               setup.cfg.seed)
    save_model(setup.out.path, config, params, setup.tok)
    ckpt_mod.remove_checkpoint(setup.out.path)
    say(f"model saved to {setup.out.path}")
    say(quality_line(config["quality"]))
    return Model(config, params, setup.tok, path=setup.out.path)
