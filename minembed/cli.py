"""The command line: thin verbs over the Python API (``minembed --help``).

Every error a user can cause is a MinembedError, printed as one line
(``Error: ...``) with exit status 1; never a traceback.
"""
import json
import os
import sys

import click
import numpy as np

from .errors import MinembedError


class _Group(click.Group):
    """Turn the package's user-facing errors into click's one-line errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinembedError as e:
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
    minembed eval model [labelled.jsonl]   kNN accuracy vs TF-IDF and untrained
    minembed compare [labelled.jsonl]      the paper's configurations, one table
    minembed search model corpus "query"   nearest documents to a query
    minembed map model [corpus] -o map.png    t-SNE map of the corpus
    minembed plot-log model -o curve.png   loss and kNN accuracy against steps
    """


_FORMAT = click.option("--format", "fmt", type=click.Choice(["auto", "lines", "paragraphs", "jsonl"]),
                       default="auto", show_default=True,
                       help="corpus format: one document per line, blank-line separated "
                            "paragraphs, or JSON lines with a 'text' (and 'label') field; "
                            "auto = jsonl for .jsonl files, else lines. .gz is read transparently.")
_DEVICE = click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                       show_default=True, help="where to compute (gpu needs CuPy)")


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", default="minembed_model", show_default=True,
              help="output model directory")
@click.option("--model", type=click.Choice(["bag", "transformer"]), default="bag", show_default=True,
              help="encoder: bag of token embeddings (mean pooled) or a small transformer")
@_FORMAT
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False),
              help="use this tokenizer.json instead of training one on the corpus")
@click.option("--vocab-size", type=int, default=8192, show_default=True,
              help="vocabulary of the tokenizer trained on the corpus")
@click.option("--dim", type=int, default=256, show_default=True, help="embedding dimension")
@click.option("--epochs", type=int,
              help="passes over the corpus [default: enough for 800 steps (bag) or 300 steps "
                   "(transformer), at least 3 and at most 100 epochs]")
@click.option("--max-steps", type=int, default=0,
              help="stop after this many steps (the schedule ends there too); 0: all epochs")
@click.option("--batch-size", type=int, help="positive pairs per step [bag: 128, transformer: 64]")
@click.option("--lr", type=float, help="peak learning rate [bag: 0.1, transformer: 5e-4]")
@click.option("--warmup", type=float, default=0.1, show_default=True,
              help="linear warm-up, as a fraction of the first epoch; then linear decay to 0")
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]),
              help="[bag: adam, transformer: adamw]")
@click.option("--weight-decay", type=float, help="AdamW decoupled weight decay [0.01]")
@click.option("--lazy/--dense", default=True, show_default=True,
              help="Adam on the embedding rows a batch used (lazy) or on every row (dense)")
@click.option("--clip", type=float, help="clip the global gradient norm (0: off) [bag: 0, transformer: 1]")
@click.option("--scale", type=float, default=20.0, show_default=True,
              help="cosine similarity scale = 1/temperature")
@click.option("--symmetric", is_flag=True, help="InfoNCE in both directions (anchors<->positives)")
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same model")
@click.option("--crops", type=click.Choice(["auto", "sentences", "spans"]), default="auto",
              show_default=True,
              help="sentence crops, token spans, or auto: sentence crops where a document has "
                   "two, token spans for the others")
@click.option("--crop-sentences", type=int, default=2, show_default=True,
              help="consecutive sentences per crop")
@click.option("--sentence-min", type=int, default=100, show_default=True,
              help="shortest kept sentence (characters)")
@click.option("--sentence-max", type=int, default=250, show_default=True,
              help="longest kept sentence (characters)")
@click.option("--span-min", type=float, default=0.1, show_default=True,
              help="shortest token span, as a fraction of the document")
@click.option("--span-max", type=float, default=0.5, show_default=True,
              help="longest token span, as a fraction of the document")
@click.option("--positives", type=click.Choice(["crops", "dropout", "mask"]), default="crops",
              show_default=True,
              help="two crops; one crop twice with dropout (SimCSE, transformer only); "
                   "or crops with masked tokens")
@click.option("--mask-frac", type=float, default=0.3, show_default=True,
              help="fraction of tokens masked with --positives mask")
@click.option("--layers", type=int, default=4, show_default=True, help="transformer blocks")
@click.option("--heads", type=int, default=4, show_default=True, help="attention heads")
@click.option("--ffn", type=int, default=1024, show_default=True, help="feed-forward width")
@click.option("--max-len", type=int, default=128, show_default=True,
              help="transformer: longest view in tokens (longer ones are cut)")
@click.option("--dropout", type=float, default=0.1, show_default=True, help="transformer dropout")
@click.option("--max-doc-chars", type=int, default=1_000_000, show_default=True,
              help="refuse documents longer than this")
@click.option("--eval-every", type=int, default=0,
              help="with a labelled corpus: record kNN accuracy in the log every N steps")
@_DEVICE
@click.option("--force", is_flag=True, help="overwrite a model already in the output directory")
@click.option("--checkpoint-every", type=int, default=None,
              help="save a checkpoint (weights, optimiser state, position) every N steps; "
                   "0: only on Ctrl-C  [default: every 5 minutes]")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="continue the interrupted run in this model directory, with its settings "
                   "and its corpus (give CORPUS only if the file moved)")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar or messages")
def train(corpus, out, fmt, tokenizer_path, max_doc_chars, eval_every, device, force, quiet,
          checkpoint_every, resume_dir, **opts):
    """Train an encoder on CORPUS (default: the built-in corpus of numpy, scipy and
    scikit-learn docstrings) and write a model directory.

    \b
    Ctrl-C saves a checkpoint and stops; continue with
        minembed train --resume MODEL_DIR
    which ends with exactly the model an uninterrupted run gives."""
    from .checkpoint import TrainingInterrupted, read_info
    from .train import TrainConfig, train as run

    if resume_dir is not None:
        ctx = click.get_current_context()
        fixed = [max(p.opts, key=len) for p in ctx.command.params if p.name not in
                 ("corpus", "device", "quiet", "checkpoint_every", "resume_dir")
                 and ctx.get_parameter_source(p.name) not in
                 (click.core.ParameterSource.DEFAULT, None)]
        if fixed:
            raise MinembedError(f"--resume continues a run with its own settings; "
                                f"{', '.join(fixed)} cannot be given with it")
        try:
            info = read_info(resume_dir)
        except MinembedError:
            info = None  # train() says what is wrong (after the lock: "locked" comes first)
        out, cfg = resume_dir, None
        if info is not None:
            fmt, max_doc_chars = info["corpus"]["format"], info["corpus"]["max_doc_chars"]
            eval_every = info.get("eval_every", 0)
    else:
        cfg = TrainConfig(**opts)
    eval_fn = None
    if eval_every:
        eval_corpus = corpus if corpus is not None or resume_dir is None else info["corpus"]["path"]
        eval_fn = _eval_fn(eval_corpus, fmt, max_doc_chars)
    try:
        run(corpus, out, cfg, fmt=fmt, tokenizer_path=tokenizer_path, force=force, quiet=quiet,
            device=device, max_doc_chars=max_doc_chars, eval_every=eval_every, eval_fn=eval_fn,
            checkpoint_every=checkpoint_every, resume=resume_dir is not None)
    except TrainingInterrupted as e:
        click.echo(f"\n{e}", err=True)
        sys.exit(130)


def _eval_fn(corpus, fmt, max_doc_chars):
    from .evaluate import evaluate_model, labelled_corpus
    texts, labels = labelled_corpus(corpus, fmt, max_doc_chars)
    return lambda model: evaluate_model(model, texts, labels)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the (N, dim) float32 array (.npy)")
@_FORMAT
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--normalize/--no-normalize", default=None,
              help="unit-length vectors (default: as the model's config says; true for trained models)")
@_DEVICE
def embed(model_dir, input_path, output, fmt, batch_size, normalize, device):
    """Embed the documents of INPUT with the model in MODEL_DIR into a .npy file
    (one row per document, in file order)."""
    import io
    from . import corpus as corpus_mod
    from .model import atomic_write_bytes, load

    model = load(model_dir, device=device)
    texts, _ = corpus_mod.read_corpus(input_path, fmt)
    X = model.encode(texts, batch_size=batch_size, normalize=normalize)
    buf = io.BytesIO()
    np.save(buf, X)
    atomic_write_bytes(output, buf.getvalue())
    click.echo(f"wrote {X.shape[0]} x {X.shape[1]} embeddings to {output}", err=True)


@main.command("eval")
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@_FORMAT
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@_DEVICE
def eval_(model_dir, corpus, fmt, as_json, device):
    """kNN accuracy (k = 10, Euclidean and cosine, 90/10 split, fixed seed) of the
    model on a labelled CORPUS (default: the built-in one), next to the untrained
    model and a TF-IDF -> SVD(100) -> L2 baseline."""
    from .evaluate import evaluate_model, knn_scores, labelled_corpus, tfidf
    from .model import Model, load

    model = load(model_dir, device=device)
    texts, labels = labelled_corpus(corpus, fmt)
    untrained = Model(model.config, model.encoder.init_params(
        model.config, np.random.default_rng([model.config.get("training", {}).get("seed", 0), 0])),
        model.tokenizer)
    rows = {"model": evaluate_model(model, texts, labels),
            "untrained": evaluate_model(untrained, texts, labels),
            "tfidf_svd_l2": knn_scores(tfidf(texts, svd_dim=100, l2=True), labels)}
    result = {"model_dir": model_dir, "corpus": corpus or "built-in", "documents": len(texts),
              "labels": len(set(labels)), "k": 10, "results": rows}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{len(texts):,} documents, {len(set(labels))} labels, kNN k=10, 90/10 split")
    click.echo(f"{'':16s} {'euclidean':>10s} {'cosine':>10s}")
    for name, r in rows.items():
        click.echo(f"{name:16s} {100 * r['knn_euclidean']:9.1f}% {100 * r['knn_cosine']:9.1f}%")


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default="compare_results", show_default=True,
              help="directory for compare.json/.md (and sweep-NAME.json/.md)")
@_FORMAT
@click.option("--fast", is_flag=True,
              help="smoke test: small models on <= 800 documents, ~1-2 minutes")
@click.option("--budget", "budget_minutes", type=float,
              help="time budget in minutes for everything requested; training runs get shares "
                   "of it (timed first) [default 30, --fast 1.25]")
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
def compare(corpus, out_dir, fmt, fast, budget_minutes, sweeps, sweep_model, no_main, max_docs,
            seed, keep_models, quiet):
    """Train and evaluate the paper's configurations on a labelled CORPUS (.jsonl
    with "text" and "label"; default: the built-in corpus) and print one table:
    untrained bag model, bag + crops, transformer from scratch + crops / + dropout
    positives / + masking, TF-IDF and TF-IDF + SVD + L2 baselines; kNN accuracy
    (k = 10, Euclidean and cosine, 90/10 split, fixed seed), linear probe
    (standardise + logistic regression), training steps and time.

    \b
    minembed compare                      the built-in corpus, ~30 minutes
    minembed compare --fast               a smoke test, under 2 minutes
    minembed compare data.jsonl --budget 60 --sweep temperature --sweep lr
    """
    import shlex
    from .compare import format_table, run_comparison, write_tables

    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_comparison(corpus, fast=fast, budget_minutes=budget_minutes, fmt=fmt,
                            sweeps=sweeps, sweep_model=sweep_model, main=not no_main,
                            max_docs=max_docs, seed=seed, keep_models=keep_models, say=say,
                            work_dir=os.path.join(out_dir, "models") if keep_models else None)
    args = ([corpus] if corpus else []) + (["--fast"] if fast else []) + \
        (["--budget", f"{budget_minutes:g}"] if budget_minutes is not None else []) + \
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
@click.option("-o", "--out", default="map.png", show_default=True, type=click.Path(dir_okay=False),
              help="the PNG; the coordinates go next to it (.npy and .csv)")
@_FORMAT
@click.option("--perplexity", type=float, help="t-SNE perplexity [30, lower for tiny corpora]")
@click.option("--max-docs", type=int, help="map a random subset of this many documents")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--title", help="the picture's title")
def map_(model_dir, corpus, out, fmt, perplexity, max_docs, seed, title):
    """A 2-D map of CORPUS (default: the built-in corpus) embedded by the model in
    MODEL_DIR: t-SNE (PCA initialisation) of the document embeddings, drawn as a
    scatter coloured by label when the corpus has labels (jsonl "label"). Needs
    matplotlib (pip install 'minembed[plot]')."""
    from .viz import map_corpus

    _, _, paths = map_corpus(model_dir, corpus, out, fmt=fmt, perplexity=perplexity, seed=seed,
                             max_docs=max_docs, title=title)
    click.echo(f"wrote {', '.join(paths)}", err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.argument("query")
@click.option("-k", type=int, default=10, show_default=True, help="how many documents to show")
@_FORMAT
@click.option("--no-cache", is_flag=True,
              help="do not read or write the corpus embeddings cached in MODEL_DIR")
@click.option("--width", type=int, default=160, show_default=True,
              help="cut each document to this many characters (0: whole)")
@click.option("--json", "as_json", is_flag=True, help="print the hits as JSON lines")
def search(model_dir, corpus, query, k, fmt, no_cache, width, as_json):
    """The K documents of CORPUS nearest to QUERY (cosine similarity of the
    embeddings by the model in MODEL_DIR), with their scores and labels. The
    corpus embeddings are cached in MODEL_DIR, so the next query is instant."""
    import dataclasses
    from .search import CorpusIndex

    index = CorpusIndex.build(model_dir, corpus, fmt=fmt, cache=not no_cache)
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
    corpus), against steps. Needs matplotlib (pip install 'minembed[plot]')."""
    from .viz import plot_log as draw

    n = draw(model_dir, out)
    click.echo(f"wrote {out}" + ("" if n else " (no kNN accuracy in the log: train with "
                                             "--eval-every N on a labelled corpus)"), err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
