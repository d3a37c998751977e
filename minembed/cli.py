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
@click.option("--epochs", type=int, help="passes over the corpus [bag: 3, transformer: 3]")
@click.option("--max-steps", type=int, default=0,
              help="stop after this many steps (the schedule ends there too); 0: all epochs")
@click.option("--batch-size", type=int, help="positive pairs per step [bag: 256, transformer: 64]")
@click.option("--lr", type=float, help="peak learning rate [bag: 0.5, transformer: 5e-4]")
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
        info = read_info(resume_dir)
        out, cfg, fmt = resume_dir, None, info["corpus"]["format"]
        max_doc_chars, eval_every = info["corpus"]["max_doc_chars"], info.get("eval_every", 0)
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


def _labelled(corpus, fmt="auto", max_doc_chars=None):
    """(texts, labels) of a labelled corpus, or of the built-in one."""
    from . import corpus as corpus_mod
    if corpus is None:
        from .datasets import docstrings
        return docstrings()
    texts, labels = corpus_mod.read_corpus(corpus, fmt, max_doc_chars or corpus_mod.MAX_DOC_CHARS)
    if labels is None:
        raise MinembedError(f"{corpus} has no labels: evaluation needs a .jsonl corpus with a "
                            f'"label" field on every line')
    return texts, labels


def _eval_fn(corpus, fmt, max_doc_chars):
    from .evaluate import evaluate_model
    texts, labels = _labelled(corpus, fmt, max_doc_chars)
    return lambda model: evaluate_model(model, texts, labels)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the (N, dim) float32 array (.npy)")
@_FORMAT
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--normalize", is_flag=True, help="scale every vector to unit length")
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
    from .evaluate import evaluate_model, knn_scores, tfidf
    from .model import Model, load

    model = load(model_dir, device=device)
    texts, labels = _labelled(corpus, fmt)
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


if __name__ == "__main__":  # pragma: no cover
    main()
