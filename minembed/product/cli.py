"""The command line: thin verbs over the Python API (``minembed --help``).

Every error a user can cause is a MinembedError, printed as one line
(``Error: ...``) with exit status 1; never a traceback.
"""
import dataclasses
import json
import os
import sys
import warnings

import click
import numpy as np

from ..errors import MinembedError


class _Group(click.Group):
    """Turn the package's user-facing errors into click's one-line errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinembedError as e:
            if getattr(e, "quiet", False):  # one of many processes: rank 0 says it
                sys.exit(1)
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            raise click.ClickException("out of memory (try a smaller --batch-size)") from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.version_option(package_name="minembed")
def main():
    """minembed: train text embeddings on your own corpus, with text-crop positive
    pairs and an InfoNCE loss, in NumPy with hand-written backward passes.

    \b
    minembed train corpus.txt -o model     train (no corpus: the built-in one)
    minembed embed model texts.txt -o x.npy   embed texts with a trained model
    minembed export model --to model2vec DIR  for sentence-transformers or model2vec
    minembed eval model [labelled.jsonl]   kNN accuracy and retrieval vs TF-IDF
    minembed compare [labelled.jsonl]      the paper's configurations, one table
    minembed search model corpus "query"   nearest documents to a query
    minembed map model [corpus] -o map.html   t-SNE map of the corpus (.png or .html)
    minembed plot-log model -o curve.png   loss and kNN accuracy against steps
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"Warning: {message}\n"


def _corpus_options(f):
    """--format, --encoding, --errors: how a corpus file is read (minembed.data)."""
    f = click.option("--errors", type=click.Choice(["strict", "replace"]), default="strict",
                     show_default=True, help="undecodable bytes: stop with an error, or replace "
                                             "them with U+FFFD")(f)
    f = click.option("--encoding", default="utf-8", show_default=True,
                     help="the corpus file's text encoding (e.g. latin-1, cp1252)")(f)
    return click.option("--format", "fmt", type=click.Choice(["auto", "lines", "paragraphs", "jsonl"]),
                        default="auto", show_default=True,
                        help="one document per line, blank-line separated paragraphs, or JSON lines "
                             "with a 'text' (and 'label') field; auto = jsonl for .jsonl files, else "
                             "lines. .gz is read transparently.")(f)


_DEVICE = click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                       show_default=True, help="where to compute (gpu needs CuPy)")
_THREADS = click.option("--threads", type=click.IntRange(min=1), envvar="MINEMBED_THREADS",
                        help="BLAS threads [MINEMBED_THREADS, else bag: 1, transformer: the idle cores]")


def _config_options(f):
    """One option per TrainConfig field: its default, --help and choices come from there."""
    from ..core.train import TrainConfig
    for field in reversed(dataclasses.fields(TrainConfig)):
        m, name = field.metadata, "--" + field.name.replace("_", "-")
        if field.type is bool:   # --lazy/--dense, --bag-init/--no-bag-init, --symmetric
            flag = "--lazy/--dense" if field.name == "lazy" else \
                f"{name}/--no-{name[2:]}" if field.default else name
            f = click.option(flag, default=field.default, show_default=field.default, help=m["help"])(f)
        else:
            kind = click.Choice(m["choices"]) if m["choices"] else \
                {"int": int, "float": float, "str": str}.get(field.type, field.type)
            f = click.option(name, type=kind, default=field.default,
                             show_default=field.default is not None, help=m["help"])(f)
    return f


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", default="minembed_model", show_default=True, help="output model directory")
@_corpus_options
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False),
              help="use this tokenizer.json instead of training one on the corpus")
@_config_options
@click.option("--max-doc-chars", type=int, default=1_000_000, show_default=True,
              help="refuse documents longer than this")
@click.option("--eval-every", type=int, default=0,
              help="with a labelled corpus: record kNN accuracy in the log every N steps")
@_DEVICE
@_THREADS
@click.option("--force", is_flag=True, help="overwrite a model already in the output directory")
@click.option("--checkpoint-every", type=int, default=None,
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
def train(corpus, out, fmt, encoding, errors, tokenizer_path, max_doc_chars, eval_every, device,
          threads, force, quiet, checkpoint_every, resume_dir, distributed, micro_batch, **opts):
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
    from .checkpoint import TrainingInterrupted, read_info
    from .distributed import connect
    from .run import train as run
    from ..core.train import TrainConfig

    info = None
    if resume_dir is not None:
        ctx = click.get_current_context()
        fixed = [max(p.opts, key=len) for p in ctx.command.params if p.name not in
                 ("corpus", "device", "threads", "quiet", "checkpoint_every", "resume_dir",
                  "distributed", "micro_batch")
                 and ctx.get_parameter_source(p.name) not in (click.core.ParameterSource.DEFAULT, None)]
        if fixed:
            raise MinembedError(f"--resume continues a run with its own settings; "
                                f"{', '.join(fixed)} cannot be given with it")
        try:
            info = read_info(resume_dir)
        except MinembedError:
            pass  # train() says what is wrong (after the lock: "locked" comes first)
        out, cfg = resume_dir, None
        if info is not None:
            fmt, max_doc_chars = info["corpus"]["format"], info["corpus"]["max_doc_chars"]
            eval_every = info.get("eval_every", 0)
    else:
        cfg = TrainConfig(**opts)
    eval_fn = None
    if eval_every:
        from .corpus import Corpus
        from .evaluate import evaluate_model
        path = corpus if corpus is not None or info is None else info["corpus"]["path"]
        texts, labels = Corpus(path, fmt, max_doc_chars, encoding, errors).labelled("--eval-every")
        eval_fn = lambda model: evaluate_model(model, texts, labels)  # noqa: E731
    comm = connect(device, force=distributed)  # None: one process
    go = lambda: run(corpus, out, cfg, fmt=fmt, tokenizer_path=tokenizer_path, force=force,  # noqa: E731
                     quiet=quiet, device=device, max_doc_chars=max_doc_chars, eval_every=eval_every,
                     eval_fn=eval_fn, checkpoint_every=checkpoint_every, resume=resume_dir is not None,
                     encoding=encoding, errors=errors, comm=comm, micro_batch=micro_batch,
                     threads=threads)
    try:
        go() if comm is None else comm.guard(go)
    except TrainingInterrupted as e:
        if not getattr(e, "quiet", False):
            click.echo(f"\n{e}", err=True)
        sys.exit(130)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the (N, dim) array (.npy)")
@_corpus_options
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--normalize/--no-normalize", default=None,
              help="unit-length vectors (default: as the model's config says; true for trained models)")
@click.option("--dim", type=int, help="keep the first DIM dimensions, renormalised (for a model "
                                      "trained with --matryoshka)")
@click.option("--dtype", type=click.Choice(["float32", "float16", "int8", "binary"]), default="float32",
              show_default=True, help="int8: per-dimension scales from  minembed quantize MODEL  "
                                      "(x ~ q * scale / 127); binary: the sign bits, 8 to a byte")
@_DEVICE
@_THREADS
@click.option("-q", "--quiet", is_flag=True, help="no progress")
def embed(model_dir, input_path, output, fmt, encoding, errors, batch_size, normalize, dim, dtype,
          device, threads, quiet):
    """Embed the documents of INPUT with the model in MODEL_DIR into a .npy file
    (one row per document, in file order). INPUT is read as a stream and the rows
    written as they come: memory stays bounded whatever its size."""
    from .corpus import Corpus
    from .export import embed_file
    from .model import load

    model = load(model_dir, device=device)
    shape = embed_file(model, Corpus(input_path, fmt, encoding=encoding, errors=errors), output, dim,
                       dtype, normalize, batch_size, quiet, threads)
    click.echo(f"wrote {shape[0]} x {shape[1]} {'uint8 (packed bits)' if dtype == 'binary' else dtype} "
               f"embeddings to {output}", err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@_corpus_options
@click.option("--dim", "dims", type=int, multiple=True,
              help="also for vectors cut to this dimension (repeatable) [the trained ones]")
@click.option("--max-docs", type=click.IntRange(1), default=10_000, show_default=True,
              help="calibrate on the first N documents")
@_DEVICE
def quantize(model_dir, corpus, fmt, encoding, errors, dims, max_docs, device):
    """Calibrate int8 output (embed --dtype int8) on CORPUS (default: the built-in
    corpus): per-dimension scales, the largest |x_d| of the unit vectors of its
    documents, stored in MODEL_DIR/int8_scales.json. Calibrate on text like what
    you will embed: larger values are clipped."""
    import itertools
    from .corpus import Corpus
    from .export import calibrate
    from .model import load

    model = load(model_dir, device=device)
    source = Corpus(corpus, fmt, encoding=encoding, errors=errors)
    texts = list(itertools.islice(source.texts(), max_docs))
    if not texts:
        raise MinembedError(f"{source.name}: no documents found (the file is empty or blank)")
    scales = calibrate(model, texts, dims)
    click.echo(f"wrote int8 scales for dimension {', '.join(scales)} ({len(texts):,} documents) to "
               f"{os.path.join(model_dir, 'int8_scales.json')}", err=True)


@main.command("export")
@click.argument("model_dir", type=click.Path())
@click.argument("out_dir", type=click.Path())
@click.option("--to", "target", required=True, type=click.Choice(["sentence-transformers", "model2vec"]),
              help="the library that will load OUT_DIR")
@click.option("--force", is_flag=True, help="replace an earlier export in OUT_DIR")
def export_(model_dir, out_dir, target, force):
    """Write the bag model in MODEL_DIR as a directory that sentence-transformers
    (SentenceTransformer(OUT_DIR)) or model2vec (StaticModel.from_pretrained(OUT_DIR))
    loads unchanged, giving the vectors minembed gives (model2vec: but for texts
    with [UNK] tokens, which it drops; see docs/export.md)."""
    from .export import export
    from .model import load

    files = export(load(model_dir), target, out_dir, force=force)
    click.echo(f"wrote {', '.join(files)} to {out_dir}", err=True)


@main.command("eval")
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@_corpus_options
@click.option("--splits", type=click.IntRange(1, 100), default=1, show_default=True,
              help="kNN accuracy over this many random 90/10 splits (mean ± sd); 1: the fixed split")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@_DEVICE
@_THREADS
def eval_(model_dir, corpus, fmt, encoding, errors, splits, as_json, device, threads):
    """Evaluate the model in MODEL_DIR on CORPUS (default: the built-in one).

    \b
    Labelled corpus (.jsonl with "label"): kNN accuracy (k = 10, Euclidean and
    cosine, 90/10 split) of the model, the untrained model, plain TF-IDF,
    TF-IDF -> SVD(100) -> L2 and the majority class.
    Any corpus: retrieval of a held-out crop (a quarter of each document's
    words): Recall@1, Recall@10 and MRR, next to TF-IDF on the same task."""
    from . import evaluate as ev
    from .corpus import Corpus
    from .model import Model, load
    from .progress import Progress
    from .runtime import tuned

    model = load(model_dir, device=device)
    click.get_current_context().with_resource(tuned(model.config["model"], threads))  # kNN's too
    source = Corpus(corpus, fmt, encoding=encoding, errors=errors)
    texts, labels = source.read()
    untrained = Model(model.config, model.encoder.init_params(
        model.config, np.random.default_rng([model.config.get("training", {}).get("seed", 0), 0])),
        model.tokenizer)
    result = {"model_dir": model_dir, "corpus": source.name, "documents": len(texts), "k": ev.K,
              "splits": splits}

    def embed(m, docs, what):
        bar = Progress(len(docs), f"embedding {what}", "document", quiet=as_json)
        X = m.encode(docs, progress=bar.update)
        bar.close()
        return X

    if labels is not None:
        source.labelled("kNN evaluation")  # refuses a single label
        rows = {"model": ev.knn_scores(embed(model, texts, "the corpus"), labels, splits),
                "untrained": ev.knn_scores(embed(untrained, texts, "the corpus (untrained)"), labels, splits),
                "tfidf": ev.knn_scores(ev.tfidf(texts), labels, splits),
                "tfidf_svd_l2": ev.knn_scores(ev.tfidf(texts, svd_dim=100, l2=True), labels, splits)}
        maj = [ev.majority_accuracy(labels, seed=s) for s in (range(splits) if splits > 1 else [ev.SPLIT_SEED])]
        rows["majority"] = {"knn_euclidean": float(np.mean(maj)), "knn_cosine": float(np.mean(maj))}
        result.update(labels=len(set(labels)), knn=rows)
    result["retrieval"] = {"model": ev.retrieval(texts, lambda d: embed(model, d, "crops and rests")),
                           "tfidf": ev.tfidf_retrieval(texts)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if labels is not None:
        how = "90/10 split" if splits == 1 else f"mean ± sd over {splits} random 90/10 splits"
        click.echo(f"{len(texts):,} documents, {len(set(labels))} labels; kNN k={ev.K}, {how}")
        click.echo(f"{'':16s} {'euclidean':>14s} {'cosine':>14s}")
        for name, r in rows.items():
            cells = [f"{100 * r[k]:.1f}" + (f" ± {100 * r[k + '_sd']:.1f}" if k + "_sd" in r else "") + "%"
                     for k in ("knn_euclidean", "knn_cosine")]
            click.echo(f"{name:16s} {cells[0]:>14s} {cells[1]:>14s}")
    r = result["retrieval"]
    click.echo(f"retrieval of a held-out crop ({r['model']['documents']:,} documents): "
               f"{'':4s} R@1    R@10   MRR")
    for name in ("model", "tfidf"):
        click.echo(f"  {name:10s} {100 * r[name]['recall@1']:6.1f}% {100 * r[name]['recall@10']:6.1f}% "
                   f"{r[name]['mrr']:6.3f}")


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default="compare_results", show_default=True,
              help="directory for compare.json/.md (and sweep-NAME.json/.md)")
@_corpus_options
@click.option("--fast", is_flag=True, help="smoke test: small models on <= 800 documents (~1 minute)")
@click.option("--sweep", "sweeps", multiple=True,
              type=click.Choice(["temperature", "crop-sentences", "lr", "mask-frac"]),
              help="also sweep one setting, as in the paper's figures: temperature "
                   "(0.005-5), sentences per crop (1-4), learning rate, masking fraction "
                   "(0.1-0.8); repeatable, each writes its own table")
@click.option("--sweep-model", type=click.Choice(["bag", "transformer"]), default="bag",
              show_default=True, help="the encoder the sweeps train")
@click.option("--no-main", is_flag=True, help="only the sweeps, not the main comparison")
@click.option("--max-docs", type=int, help="use a random subset of this many documents")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep-models", is_flag=True, help="keep the trained models (in OUT/models)")
@click.option("-q", "--quiet", is_flag=True, help="no progress messages")
def compare(corpus, out_dir, fmt, encoding, errors, fast, sweeps, sweep_model, no_main, max_docs,
            seed, keep_models, quiet):
    """Train and evaluate the paper's configurations on a labelled CORPUS (.jsonl
    with "text" and "label"; default: the built-in corpus) and print one table:
    TF-IDF baselines, majority class, untrained bag model, bag + crops,
    transformer from scratch + crops / + dropout positives / + masking; kNN
    accuracy (k = 10, Euclidean and cosine, 90/10 split), linear probe,
    training steps and time.

    \b
    Each trained row runs a fixed number of steps (bag: train's 40 epochs; transformer 420),
    so the table is the same on any machine; the time is what the transformer
    rows take on your CPU (about 4 minutes in all on 2 quiet cores for the
    built-in corpus, twice that on a busy machine; --fast: about a minute).
    """
    import shlex
    from .compare import format_table, run_comparison, write_tables

    if (encoding, errors) != ("utf-8", "strict"):
        raise MinembedError("compare reads UTF-8 .jsonl corpora (convert the file first)")
    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_comparison(corpus, fast=fast, fmt=fmt, sweeps=sweeps, sweep_model=sweep_model,
                            main=not no_main, max_docs=max_docs, seed=seed, keep_models=keep_models,
                            say=say, work_dir=os.path.join(out_dir, "models") if keep_models else None)
    args = ([corpus] if corpus else []) + (["--fast"] if fast else []) + \
        [a for s in sweeps for a in ("--sweep", s)] + (["--no-main"] if no_main else []) + \
        (["--max-docs", str(max_docs)] if max_docs else [])
    command = " ".join(["minembed compare"] + [shlex.quote(a) for a in args])
    m = result["meta"]
    click.echo(f"{m['corpus']}: {m['documents']:,} documents, {m['labels']} labels, kNN k=10, "
               f"{m['split']} split; {m['total_seconds']:.0f} s")
    if result["rows"]:
        click.echo(format_table(result["rows"]))
    for name, rows in result["sweeps"].items():
        click.echo(f"\nsweep: {name} ({sweep_model} model)")
        click.echo(format_table(rows))
    paths = write_tables(result, out_dir, command=command)
    click.echo(f"\nwrote {', '.join(paths)}", err=True)


@main.command("map")
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", multiple=True, type=click.Path(dir_okay=False),
              help="map.png (a picture) or map.html (an interactive page); repeat for both; the "
                   "coordinates go next to it (.npy and .csv)  [default: map.png]")
@_corpus_options
@click.option("--perplexity", type=float, help="t-SNE perplexity [30, lower for tiny corpora]")
@click.option("--exaggeration", type=float,
              help="t-SNE exaggeration after the early phase (openTSNE; e.g. 4: tighter, more "
                   "separated clusters)  [default: 1]")
@click.option("--max-docs", type=int, help="map a random subset of this many documents")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--title", help="the title [model, corpus, documents, labels and kNN accuracy]")
def map_(model_dir, corpus, out, fmt, encoding, errors, perplexity, exaggeration, max_docs, seed,
         title):
    """A 2-D map of CORPUS (default: the built-in corpus) embedded by the model in
    MODEL_DIR: t-SNE (openTSNE when installed, else scikit-learn's; PCA initialisation)
    of the document embeddings, coloured by label when the corpus has labels (jsonl
    "label"), each label's name at the middle of its points. A .html output is one
    self-contained page: hover shows a document, pan, zoom, search. Needs the plot
    extra (in a clone: pip install -e ".[plot]")."""
    from .viz import map_corpus

    _, _, paths = map_corpus(model_dir, corpus, list(out) or ["map.png"], fmt=fmt,
                             perplexity=perplexity, seed=seed, max_docs=max_docs, title=title,
                             encoding=encoding, errors=errors, exaggeration=exaggeration)
    click.echo(f"wrote {', '.join(paths)}", err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.argument("query")
@click.option("-k", type=int, default=10, show_default=True, help="how many documents to show")
@_corpus_options
@click.option("--no-cache", is_flag=True,
              help="do not read or write the corpus embeddings cached in MODEL_DIR")
@click.option("--width", type=int, default=160, show_default=True,
              help="cut each document to this many characters (0: whole)")
@click.option("--json", "as_json", is_flag=True, help="print the hits as JSON lines")
def search(model_dir, corpus, query, k, fmt, encoding, errors, no_cache, width, as_json):
    """The K documents of CORPUS nearest to QUERY (cosine similarity of the
    embeddings by the model in MODEL_DIR), with their scores and labels. The
    corpus embeddings are cached in MODEL_DIR, so the next query is instant."""
    from .search import CorpusIndex

    index = CorpusIndex.build(model_dir, corpus, fmt=fmt, cache=not no_cache, encoding=encoding,
                              errors=errors)
    for hit in index.search(query, k=k):
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
            continue
        text = hit.text if not width or len(hit.text) <= width else hit.text[:width - 3] + "..."
        label = f"  [{hit.label}]" if hit.label is not None else ""
        click.echo(f"{hit.rank:3d}. {hit.score:.3f}  #{hit.index}{label}  {text}")


@main.command("plot-log")
@click.argument("model_dir", type=click.Path())
@click.option("-o", "--out", default="curve.png", show_default=True,
              type=click.Path(dir_okay=False), help="the PNG")
def plot_log(model_dir, out):
    """Draw the training curves of the model in MODEL_DIR (its log.jsonl): loss,
    and kNN accuracy when it was recorded (train --eval-every N on a labelled
    corpus), against steps. Needs matplotlib (in a clone: pip install -e ".[plot]")."""
    from .viz import plot_log as draw

    n = draw(model_dir, out)
    click.echo(f"wrote {out}" + ("" if n else " (no kNN accuracy in the log: train with "
                                             "--eval-every N on a labelled corpus)"), err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
