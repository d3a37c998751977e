"""minembed train: the settings' options made from TrainConfig's fields, and the run's."""
import dataclasses
import sys

import click

from ...errors import MinembedError
from ..settings import TrainConfig
from .group import DEVICE, THREADS, corpus_options, main

# the options --resume takes beside its directory (the others are the run's own)
RESUME_OPTIONS = ("corpus", "device", "threads", "quiet", "checkpoint_every", "resume_dir",
                  "distributed", "micro_batch")


def config_options(f):
    """One option per TrainConfig field: its default, --help and choices come from there."""
    for field in reversed(dataclasses.fields(TrainConfig)):
        m, name = field.metadata, "--" + field.name.replace("_", "-")
        # --lazy/--dense, --bag-init/--no-bag-init, --symmetric/--no-symmetric
        if field.type is bool:
            flag = "--lazy/--dense" if field.name == "lazy" else f"{name}/--no-{name[2:]}"
            f = click.option(flag, default=field.default, show_default=True, help=m["help"])(f)
        else:
            kind = click.Choice(m["choices"]) if m["choices"] else \
                {"int": int, "float": float, "str": str}.get(field.type, field.type)
            f = click.option(name, type=kind, default=field.default,
                             show_default=field.default is not None, help=m["help"])(f)
    return f


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", default="minembed_model", show_default=True,
              help="output model directory")
@corpus_options
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False),
              help="use this tokenizer.json instead of training one on the corpus")
@config_options
@click.option("--eval-every", type=click.IntRange(0), default=0,
              help="with a labelled corpus: record kNN accuracy in the log every N steps")
@DEVICE
@THREADS
@click.option("--force", is_flag=True, help="overwrite a model already in the output directory")
@click.option("--checkpoint-every", type=click.IntRange(0), default=None,
              help="save a checkpoint (weights, optimiser state, position) every N steps; "
                   "0: only on Ctrl-C  [default: every 5 minutes]")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="continue the interrupted run in this model directory, with its settings "
                   "and its corpus (give CORPUS only if the file moved)")
@click.option("--distributed", is_flag=True,
              help="train on the processes mpiexec started, together (the default when there are "
                   "several): mpiexec -n R minembed train ...")
@click.option("--micro-batch", type=click.IntRange(0), default=0,
              help="encode this many pairs at a time: less memory, the same gradient (0: all)")
@click.option("-q", "--quiet", is_flag=True, help="no progress or messages")
def train(corpus, out, reading, tokenizer_path, eval_every, device, threads, force, quiet,
          checkpoint_every, resume_dir, distributed, micro_batch, **opts):
    """Train an encoder on CORPUS (default: the built-in corpus of numpy, scipy and
    scikit-learn docstrings) and write a model directory.

    \b
    The bag model (default) trains in seconds to a minute on a laptop CPU. The
    transformer starts as a bag model trained first and refines it: minutes on a
    CPU for 10k documents (a step of 64 pairs ~0.3 s on 2 cores; the run time is
    estimated after the first steps), ending 0.1-3.7 kNN points below the bag
    model on corpora of 3k-15k documents: use it on large corpora, or a GPU.

    \b
    Ctrl-C saves a checkpoint and stops; continue with
        minembed train --resume MODEL_DIR
    which ends with exactly the model an uninterrupted run gives.

    \b
    On many processes (pip install -e ".[mpi]"), each encodes its share of every
    batch, negatives are gathered from all, and rank 0 writes the model:
        mpiexec -n 4 minembed train corpus.txt -o model"""
    from ..checkpoint import TrainingInterrupted
    from ..distributed import connect
    from ..run import train as run

    if resume_dir is not None:
        ctx = click.get_current_context()
        fixed = [max(p.opts, key=len) for p in ctx.command.params if p.name not in RESUME_OPTIONS
                 and ctx.get_parameter_source(p.name)
                 not in (click.core.ParameterSource.DEFAULT, None)]
        if fixed:
            raise MinembedError(f"--resume continues a run with its own settings; "
                                f"{', '.join(fixed)} cannot be given with it")
        out, cfg = resume_dir, None
    else:
        cfg = TrainConfig(**opts)
    comm = connect(device, force=distributed)  # None: one process
    go = lambda: run(corpus, out, cfg, comm, tokenizer_path=tokenizer_path, force=force,  # noqa: E731
                     quiet=quiet, device=device, eval_every=eval_every, micro_batch=micro_batch,
                     checkpoint_every=checkpoint_every, resume=resume_dir is not None,
                     threads=threads, **reading)
    try:
        go() if comm is None else comm.guard(go)
    except TrainingInterrupted as e:
        if not getattr(e, "quiet", False):
            click.echo(f"\n{e}", err=True)
        sys.exit(130)
