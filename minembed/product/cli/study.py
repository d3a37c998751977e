"""Studying a model: minembed eval, compare, map, plot-log."""
import json
import os

import click

from ...errors import MinembedError
from .group import DEVICE, SEED, THREADS, corpus_options, main


@main.command("eval")
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@corpus_options
@click.option("--splits", type=click.IntRange(1, 100), default=1, show_default=True,
              help="kNN accuracy over this many random 90/10 splits (mean ± sd); 1: the fixed "
                   "split")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@DEVICE
@THREADS
def eval_(model_dir, corpus, reading, splits, as_json, device, threads):
    """Evaluate the model in MODEL_DIR on CORPUS (default: the built-in one).

    \b
    Labelled corpus (.jsonl with "label"): kNN accuracy (k = 10, Euclidean and
    cosine, 90/10 split) of the model, the untrained model, plain TF-IDF,
    TF-IDF -> SVD(100) -> L2 and the majority class.
    Any corpus: retrieval of a held-out crop (a quarter of each document's
    words): Recall@1, Recall@10 and MRR, next to TF-IDF on the same task."""
    from .. import evaluate as ev
    from ..corpus import Corpus
    from ..modeldir import load
    from ..runtime import tuned

    model = load(model_dir, device=device)
    click.get_current_context().with_resource(tuned(model.config["model"], threads))  # kNN's too
    source = Corpus(corpus, **reading)
    texts, labels = source.read()
    if labels is not None:
        source.labelled("kNN evaluation")  # refuses a single label
    result = dict(model_dir=model_dir, corpus=source.name,
                  **ev.evaluate(model, texts, labels, splits, quiet=as_json))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in ev.report_lines(result):
            click.echo(line)


@main.command()
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default="compare_results", show_default=True,
              help="directory for compare.json/.md (and sweep-NAME.json/.md)")
@corpus_options
@click.option("--fast", is_flag=True,
              help="smoke test: small models on <= 800 documents (~1 minute)")
@click.option("--sweep", "sweeps", multiple=True,
              type=click.Choice(["temperature", "crop-sentences", "lr", "mask-frac"]),
              help="also sweep one setting, as in the paper's figures: temperature "
                   "(0.005-5), sentences per crop (1-4), learning rate, masking fraction "
                   "(0.1-0.8); repeatable, each writes its own table")
@click.option("--sweep-model", type=click.Choice(["bag", "transformer"]), default="bag",
              show_default=True, help="the encoder the sweeps train")
@click.option("--no-main", is_flag=True, help="only the sweeps, not the main comparison")
@click.option("--max-docs", type=click.IntRange(20),
              help="use a random subset of this many documents")
@SEED
@click.option("--keep-models", is_flag=True, help="keep the trained models (in OUT/models)")
@click.option("-q", "--quiet", is_flag=True, help="no progress messages")
def compare(corpus, out_dir, reading, fast, sweeps, sweep_model, no_main, max_docs,
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
    rows take on your CPU (for the built-in corpus 212 s in all on 2 quiet cores,
    462 s on 2 busy ones; --fast: about a minute).
    """
    import shlex
    from ..compare import format_table, run_comparison, write_tables
    from ..files import check_output_dir

    if (reading["encoding"], reading["errors"]) != ("utf-8", "strict"):
        raise MinembedError("compare reads UTF-8 .jsonl corpora (convert the file first)")
    fmt = reading["fmt"]
    check_output_dir(out_dir)
    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_comparison(corpus, fast=fast, fmt=fmt, sweeps=sweeps, sweep_model=sweep_model,
                            main=not no_main, max_docs=max_docs, seed=seed, keep_models=keep_models,
                            say=say,
                            work_dir=os.path.join(out_dir, "models") if keep_models else None)
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
@corpus_options
@click.option("--perplexity", type=click.FloatRange(0, min_open=True),
              help="t-SNE perplexity [30, lower for tiny corpora]")
@click.option("--exaggeration", type=click.FloatRange(0, min_open=True),
              help="t-SNE exaggeration after the early phase (openTSNE; e.g. 4: tighter, more "
                   "separated clusters)  [default: 1]")
@click.option("--max-docs", type=click.IntRange(5),
              help="map a random subset of this many documents")
@SEED
@click.option("--title", help="the title [model, corpus, documents, labels and kNN accuracy]")
def map_(model_dir, corpus, out, reading, perplexity, exaggeration, max_docs, seed, title):
    """A 2-D map of CORPUS (default: the built-in corpus) embedded by the model in
    MODEL_DIR: t-SNE (openTSNE when installed, else scikit-learn's; PCA initialisation)
    of the document embeddings, coloured by label when the corpus has labels (jsonl
    "label"), each label's name at the middle of its points. A .html output is one
    self-contained page: hover shows a document, pan, zoom, search. Needs the plot
    extra (in a clone: pip install -e ".[plot]")."""
    from ..viz import map_corpus

    _, _, paths = map_corpus(model_dir, corpus, list(out) or ["map.png"], perplexity=perplexity,
                             seed=seed, max_docs=max_docs, title=title, exaggeration=exaggeration,
                             **reading)
    click.echo(f"wrote {', '.join(paths)}", err=True)


@main.command("plot-log")
@click.argument("model_dir", type=click.Path())
@click.option("-o", "--out", default="curve.png", show_default=True,
              type=click.Path(dir_okay=False), help="the PNG")
def plot_log(model_dir, out):
    """Draw the training curves of the model in MODEL_DIR (its log.jsonl): loss,
    and kNN accuracy when it was recorded (train --eval-every N on a labelled
    corpus), against steps. Needs matplotlib (in a clone: pip install -e ".[plot]")."""
    from ..files import check_output
    from ..viz import plot_log as draw

    check_output(out, (".png",))
    n = draw(model_dir, out)
    click.echo(f"wrote {out}" + ("" if n else " (no kNN accuracy in the log: train with "
                                             "--eval-every N on a labelled corpus)"), err=True)
