"""Using a model: minembed embed, quantize, export, search."""
import dataclasses
import json
import os

import click

from .group import DEVICE, THREADS, corpus_options, main


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the (N, dim) array (.npy)")
@corpus_options
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--normalize/--no-normalize", default=None,
              help="unit-length vectors (default: as the model's config says; true for trained "
                   "models)")
@click.option("--dim", type=click.IntRange(1), help="keep the first DIM dimensions, renormalised "
                                                    "(for a model trained with --matryoshka)")
@click.option("--dtype", type=click.Choice(["float32", "float16", "int8", "binary"]),
              default="float32",
              show_default=True, help="int8: per-dimension scales from  minembed quantize MODEL  "
                                      "(x ~ q * scale / 127); binary: the sign bits, 8 to a byte")
@DEVICE
@THREADS
@click.option("-q", "--quiet", is_flag=True, help="no progress")
def embed(model_dir, input_path, output, reading, batch_size, normalize, dim, dtype, device,
          threads, quiet):
    """Embed INPUT with the model in MODEL_DIR into a .npy file: one row per line of a "lines"
    file, in order, an empty line included (its row: encode("")'s vector, zeros); one per
    paragraph, or per JSON record. INPUT (- for standard input) is read as a stream and the
    rows written as they come: memory stays bounded whatever its size."""
    from ..corpus import Corpus
    from ..export import embed_file
    from ..files import check_output
    from ..modeldir import load

    check_output(output, (".npy",))
    model = load(model_dir, device=device)
    shape, empty, unknown = embed_file(model, Corpus(input_path, **reading), output, dim, dtype,
                                       normalize, batch_size, quiet, threads)
    kind = "uint8 (packed bits)" if dtype == "binary" else dtype
    note = f"; {empty:,} empty, given encode(\"\")'s vector (zeros)" if empty else ""
    note += f"; {unknown:,} with no word the model knows, zeros too" if unknown else ""
    click.echo(f"wrote {shape[0]:,} x {shape[1]} {kind} embeddings to {output} (a row per "
               f"document, in order{note})", err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", required=False, type=click.Path(dir_okay=False))
@corpus_options
@click.option("--dim", "dims", type=click.IntRange(1), multiple=True,
              help="also for vectors cut to this dimension (repeatable) [the trained ones]")
@click.option("--max-docs", type=click.IntRange(1), default=10_000, show_default=True,
              help="calibrate on the first N documents")
@DEVICE
def quantize(model_dir, corpus, reading, dims, max_docs, device):
    """Calibrate int8 output (embed --dtype int8) on CORPUS (default: the built-in
    corpus): per-dimension scales, the largest |x_d| of the unit vectors of its
    documents, stored in MODEL_DIR/int8_scales.json. Calibrate on text like what
    you will embed, and enough of it: larger values are clipped."""
    import itertools
    from ..corpus import Corpus
    from ..export import calibrate
    from ..modeldir import load

    model = load(model_dir, device=device)
    texts = list(itertools.islice(Corpus(corpus, **reading).texts(), max_docs))
    scales = calibrate(model, texts, dims)
    click.echo(f"wrote int8 scales for dimension {', '.join(scales)} ({len(texts):,} documents) "
               f"to {os.path.join(model_dir, 'int8_scales.json')}", err=True)


@main.command("export")
@click.argument("model_dir", type=click.Path())
@click.argument("out_dir", type=click.Path())
@click.option("--to", "target", required=True,
              type=click.Choice(["sentence-transformers", "model2vec"]),
              help="the library that will load OUT_DIR")
@click.option("--force", is_flag=True, help="replace an earlier export in OUT_DIR")
def export_(model_dir, out_dir, target, force):
    """Write the bag model in MODEL_DIR as a directory that sentence-transformers
    (SentenceTransformer(OUT_DIR)) or model2vec (StaticModel.from_pretrained(OUT_DIR))
    loads unchanged, giving the vectors minembed gives (model2vec: but for texts
    with [UNK] tokens, which it drops; see docs/export.md)."""
    from ..export import export
    from ..modeldir import load

    files = export(load(model_dir), target, out_dir, force=force)
    click.echo(f"wrote {', '.join(files)} to {out_dir}", err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.argument("query")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True,
              help="how many documents to show")
@corpus_options
@click.option("--no-cache", is_flag=True,
              help="do not read or write the corpus embeddings cached in MODEL_DIR")
@click.option("--width", type=click.IntRange(0), default=160, show_default=True,
              help="cut each document to this many characters (0: whole)")
@click.option("--json", "as_json", is_flag=True, help="print the hits as JSON lines")
def search(model_dir, corpus, query, k, reading, no_cache, width, as_json):
    """The K documents of CORPUS nearest to QUERY (cosine similarity of the
    embeddings by the model in MODEL_DIR), with their scores, line numbers and
    labels. The corpus embeddings are cached in MODEL_DIR, so the next query is
    instant."""
    from ..search import CorpusIndex

    index = CorpusIndex.build(model_dir, corpus, cache=not no_cache, **reading)
    for hit in index.search(query, k=k):
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
            continue
        text = hit.text if not width or len(hit.text) <= width else hit.text[:width - 3] + "..."
        label = f"  [{hit.label}]" if hit.label is not None else ""
        click.echo(f"{hit.rank:3d}. {hit.score:.3f}  line {hit.line}{label}  {text}")
